"""ROS-free: one-shot single-frame localization beside the live sequence, and settings changed on a loaded
Localizer (Localizer.localize_single_frame, Localizer.reconfigure), on the corridor map and query images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.core.encoders import EncoderConfig
from vpr_ros.core.image import load_rgb
from vpr_ros.core.localizer import Hypothesis, Localizer, LocalizerConfig
from vpr_ros.core.patchnetvlad.rerank import RerankConfig
from vpr_ros.core.refmap import MapError, ReferenceMap
from vpr_ros.core.sequence import SequenceConfig


def buffer_state(localizer: Localizer) -> tuple:
    """All the query sequence remembers: buffered frames (stamp, descriptor, candidates), restarts, last stamp."""
    buffer = localizer.sequence.buffer
    return ([(f.stamp, f.descriptor.tobytes(), f.rows.tobytes(), f.progress) for f in buffer._frames],
            buffer.restarts, buffer._last_seen)


def assert_same_answer(a: Hypothesis, b: Hypothesis) -> None:
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    assert a.confidence == pytest.approx(b.confidence, abs=1e-6)


@pytest.mark.parametrize(("map_name", "method"), [("corridor_map", "seqslam"), ("corridor_map", "seq2im_min"),
                                                   ("corridor_patch_map", "seq2im_min"), ("corridor_map", "none")])
def test_single_frame_answer_equals_the_topic_paths_and_leaves_the_sequence_alone(request, encoder, corridor,
                                                                                  map_name, method):
    refmap = ReferenceMap.load(request.getfixturevalue(map_name))
    config = LocalizerConfig(top_k=5, rerank=RerankConfig(candidates=20),
                             sequence=SequenceConfig(method=method, length=4))
    localizer = Localizer(refmap, encoder, config)
    images = [load_rgb(corridor / "query" / f"{i:07d}.jpg") for i in (20, 21, 22, 60)]
    for stamp, rgb in enumerate(images[:3]):
        localizer.localize(rgb, float(stamp))
    before = buffer_state(localizer) if localizer.sequence is not None else None

    one_shot = localizer.localize_single_frame(images[3], stamp=3.0)

    if localizer.sequence is not None:
        assert buffer_state(localizer) == before and len(localizer.sequence.buffer) == 3
    assert one_shot.single is None and one_shot.sequence_frames == 1 and len(one_shot.indices) == 5
    assert abs(int(one_shot.ids[0]) - 60) <= 2
    live = localizer.localize(images[3], 3.0)  # the topic path, for the same image
    assert_same_answer(one_shot, live.single if live.single is not None else live)
    if method != "none":
        assert live.sequence_frames == 4  # the one-shot frame did not take a place in the sequence


def test_reconfigure_changes_settings_without_loading_the_map_again(encoder, corridor, corridor_map):
    refmap = ReferenceMap.load(corridor_map)
    config = LocalizerConfig(top_k=5, sequence=SequenceConfig(method="seq2im_min", length=4))
    localizer = Localizer(refmap, encoder, config)
    rgb = load_rgb(corridor / "query" / "0000040.jpg")
    for stamp in range(3):
        localizer.localize(rgb, float(stamp))
    matcher = localizer.sequence

    # top_k alone: the buffered frames stay (a copy of the matcher over the same buffer).
    localizer.reconfigure(replace(config, top_k=3))
    assert localizer.sequence is not matcher and localizer.sequence.buffer is matcher.buffer
    hyp = localizer.localize(rgb, 3.0)
    assert len(hyp.indices) == 3 and len(hyp.single.indices) == 3 and hyp.sequence_frames == 4
    assert localizer.refmap is refmap

    # A sequence setting: a new sequence stage, starting afresh.
    localizer.reconfigure(replace(localizer.config, sequence=SequenceConfig(method="seqslam", length=2)))
    assert localizer.sequence.config.method == "seqslam" and len(localizer.sequence.buffer) == 0
    assert localizer.localize(rgb, 4.0).sequence_frames == 1
    localizer.reconfigure(replace(localizer.config, sequence=SequenceConfig()))
    assert localizer.sequence is None and localizer.localize(rgb, 5.0).single is None

    # The confidence radius reaches the ratio test: at radius 0 the second candidate (1 m away) competes.
    localizer.reconfigure(replace(localizer.config, confidence_radius=0.0))
    hyp = localizer.localize(rgb, 6.0)
    d1, d2 = 1.0 - float(hyp.scores[0]), 1.0 - float(hyp.scores[1])
    assert hyp.confidence == pytest.approx(1.0 - d1 / d2, abs=1e-6)

    # What the loaded map or encoder cannot serve is refused, and nothing changes.
    current = localizer.config
    with pytest.raises(MapError, match=r"rerank\.method=performance needs a map with Patch-NetVLAD patches"):
        localizer.reconfigure(replace(current, rerank=RerankConfig(method="performance")))
    with pytest.raises(ValueError, match=r"localizer\.encoder cannot change"):
        localizer.reconfigure(replace(current, encoder=EncoderConfig(model="thumbnail:64x32,patch=8")))
    assert localizer.config is current and localizer.reranker is None


def test_reconfigure_rerank_candidates_on_a_patch_map(encoder, corridor, corridor_patch_map: Path):
    localizer = Localizer(ReferenceMap.load(corridor_patch_map), encoder, LocalizerConfig(rerank=RerankConfig(
        candidates=30)))
    reranker = localizer.reranker
    assert localizer.retrieval_k == 30
    localizer.reconfigure(replace(localizer.config, top_k=4, rerank=RerankConfig(candidates=12)))
    assert localizer.retrieval_k == 12 and localizer.reranker is not reranker
    hyp = localizer.localize(load_rgb(corridor / "query" / "0000070.jpg"))
    assert len(hyp.indices) == 4 and "rerank" in hyp.timings_ms and abs(int(hyp.ids[0]) - 70) <= 2
    localizer.reconfigure(replace(localizer.config, top_k=6))
    assert localizer.reranker is not None and localizer.reranker.config.candidates == 12
