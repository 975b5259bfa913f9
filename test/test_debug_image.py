"""The debug image (vpr_ros/core/debug_image.py) and the patch pairs it draws (``Localizer.explain``).

Real corridor images, the real default encoder and a real corridor map with a Patch-NetVLAD patch store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vpr_ros.core.debug_image import (
    BACKGROUND,
    MISSING_PANEL,
    debug_layout,
    drawn_matches,
    match_colours,
    render_hypothesis,
    render_match,
)
from vpr_ros.core.frames import FrameTable
from vpr_ros.core.image import load_rgb, resize_rgb
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.patchnetvlad.matching import nearest_patches
from vpr_ros.core.patchnetvlad.rerank import RerankConfig
from vpr_ros.core.patchnetvlad.store import PatchStoreConfig
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.io.bags import load_frame_source
from vpr_ros.io.images import folder_source

QUERY = "0000042.jpg"


@pytest.fixture(scope="module")
def localizer(corridor_patch_map: Path, encoder) -> Localizer:
    return Localizer(ReferenceMap.load(corridor_patch_map), encoder,
                     LocalizerConfig(top_k=5, rerank=RerankConfig(candidates=20)))


@pytest.fixture(scope="module")
def query_rgb(corridor: Path) -> np.ndarray:
    return load_rgb(corridor / "query" / QUERY)


@pytest.fixture(scope="module")
def explained(localizer: Localizer, query_rgb: np.ndarray):
    return localizer.localize(query_rgb, stamp=42.0, explain=True)


def box(image: np.ndarray, xywh: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = xywh
    return image[y:y + h, x:x + w]


def not_background(region: np.ndarray) -> int:
    return int((region != np.array(BACKGROUND, np.uint8)).any(axis=-1).sum())


class TestExplain:
    def test_pairs_are_the_mutual_matches_the_reranker_scores(self, localizer: Localizer, query_rgb: np.ndarray,
                                                             explained):
        row = explained.best_index
        pairs = explained.explanation
        assert pairs is not None and pairs.row == row
        # The same kernel on the same store codes, as in re-ranking: same number of mutual pairs.
        query = localizer.encode(query_rgb)
        patches = localizer.reranker.query_patches(query.features)[0]
        matches = nearest_patches(patches, np.asarray(localizer.reranker.stores[0][[row]]), "int8")
        assert len(pairs) == int(matches.counts[0]) > 10
        ref_to_query = dict(zip(np.flatnonzero(matches.mutual[0]).tolist(),
                                matches.nearest_query[0, matches.mutual[0]].tolist(), strict=True))
        assert dict(zip(pairs.ref_patches.tolist(), pairs.query_patches.tolist(), strict=True)) == ref_to_query
        assert np.all(np.diff(pairs.similarity) <= 0), "pairs are listed strongest first"
        assert len(set(pairs.query_patches.tolist())) == len(pairs), "mutual nearest neighbours are one-to-one"

    def test_only_computed_on_request(self, localizer: Localizer, query_rgb: np.ndarray, explained):
        plain = localizer.localize(query_rgb, stamp=42.0)
        assert plain.explanation is None
        assert plain.best_index == explained.best_index

    @pytest.mark.parametrize("preset", ["speed", "balanced"])
    def test_a_frame_matches_its_own_patches(self, preset: str, tmp_path: Path, corridor: Path, encoder):
        """int8 (speed) and float16 multi-size (balanced) stores: a map frame as query pairs every patch with
        itself, and the centres land on the grid's centres in any image size."""
        source = folder_source(corridor / "ref", corridor / "ref_poses.csv").take(np.arange(12))
        build_map(source, tmp_path / preset, BuildMapConfig(patches=PatchStoreConfig(preset=preset)),
                  progress=False, encoder=encoder)
        loc = Localizer(ReferenceMap.load(tmp_path / preset), encoder, LocalizerConfig(top_k=3))
        image = source.load_image(7)
        pairs = loc.explain(loc.encode(image), 7)
        grid = loc.reranker.spec.grids[int(np.argmax(loc.reranker.spec.weights))]
        assert pairs.grid == grid and pairs.n_query == grid.count
        # Nearly every patch pairs with itself; a few near-identical ones (the black rim of the fisheye, in the
        # 11-d PCA of 12 images) have a neighbour as nearest patch and no mutual pair.
        itself = pairs.query_patches == pairs.ref_patches
        assert itself.sum() >= 0.9 * grid.count
        assert pairs.similarity[itself].min() > 0.95
        q_xy, r_xy = pairs.centres_in(pairs.input_hw)
        assert np.array_equal(q_xy[itself], r_xy[itself])
        # PatchGrid.centres() is the same centre truncated to its pixel (for RANSAC parity with the authors' code).
        assert np.array_equal(np.floor(q_xy).astype(np.float32), grid.centres()[pairs.query_patches])
        half, _ = pairs.centres_in((pairs.input_hw[0] // 2, pairs.input_hw[1] // 2))
        assert np.allclose((half + 0.5) * 2, q_xy + 0.5)

    def test_no_patch_store_means_no_explanation(self, corridor_map: Path, encoder, query_rgb: np.ndarray):
        loc = Localizer(ReferenceMap.load(corridor_map), encoder, LocalizerConfig(top_k=3))
        assert loc.localize(query_rgb, explain=True).explanation is None


class TestRender:
    @pytest.mark.parametrize("size", [(120, 160), (480, 640)])
    def test_panels_hold_the_images_and_the_bands_hold_text(self, size: tuple[int, int], corridor: Path,
                                                           query_rgb: np.ndarray):
        query = resize_rgb(query_rgb, *size)
        reference = load_rgb(corridor / "ref" / "0000042.jpg")
        image = render_match(query, reference, None, 0.5, 0.25, ref_id=42, rank=1, candidates=5)
        layout = debug_layout(query.shape[:2], reference.shape[:2])
        assert image.shape == (layout.height, layout.width, 3) and image.dtype == np.uint8
        # Tiny inputs are upscaled for legibility; 640x480 keeps its size.
        assert layout.query_box[3] == max(size[0], 360)
        assert np.array_equal(box(image, layout.query_box), resize_rgb(query, *layout.query_box[2:][::-1]))
        assert np.array_equal(box(image, layout.reference_box), resize_rgb(reference, *layout.reference_box[2:][::-1]))
        header = image[:layout.header_height]
        footer = image[layout.footer_y:]
        assert not_background(header) > 100 and not_background(footer) > 500, "labels and numbers are written"

    def test_numbers_change_the_text(self, query_rgb: np.ndarray):
        a = render_match(query_rgb, query_rgb, None, 0.5, 0.25)
        b = render_match(query_rgb, query_rgb, None, 0.9, 0.75)
        layout = debug_layout(query_rgb.shape[:2], query_rgb.shape[:2])
        assert not np.array_equal(a[layout.footer_y:], b[layout.footer_y:])
        assert np.array_equal(a[:layout.footer_y], b[:layout.footer_y])

    def test_matches_are_drawn_where_the_pairs_say(self, localizer: Localizer, query_rgb: np.ndarray, explained):
        pairs = explained.explanation
        reference = load_frame_source(localizer.refmap.frames.sources[pairs.row])
        assert reference is not None
        plain = render_match(query_rgb, reference, None, 0.5, 0.25)
        image = render_match(query_rgb, reference, pairs, 0.5, 0.25, max_matches=20)
        layout = debug_layout(query_rgb.shape[:2], reference.shape[:2])
        query_pts, ref_pts = drawn_matches(pairs, layout, max_matches=20)
        assert len(query_pts) == 20 < len(pairs)
        # Where the pair's patch centres are, computed here from the patch grid: cell (col, row) * stride, the
        # patch's middle at size / 2 cells, pixel_stride input pixels per cell, scaled to the panel.
        grid = pairs.grid
        for pts, patches, panel in ((query_pts, pairs.query_patches, layout.query_box),
                                    (ref_pts, pairs.ref_patches, layout.reference_box)):
            rows, cols = np.divmod(patches[:20], grid.cols)
            centre_in = grid.pixel_stride * (np.stack([cols, rows], 1) * grid.stride + grid.size / 2)
            expected = centre_in * (panel[2] / pairs.input_hw[1]) - 0.5 + panel[:2]
            assert np.abs(pts - expected).max() <= 0.5
        colours = match_colours(20)
        assert len({tuple(c) for c in colours.tolist()}) == 20
        for i in range(20):
            for x, y in (query_pts[i], ref_pts[i]):
                assert tuple(image[y, x]) == tuple(colours[i]), f"end point {i} at ({x}, {y})"
                assert tuple(plain[y, x]) != tuple(colours[i])
        changed = (image != plain).any(axis=-1)
        assert not changed[:layout.header_height].any(), "drawing stays inside the panels"
        assert changed[layout.header_height:layout.footer_y].sum() > 20 * 30, "lines join the end points"

    def test_missing_reference_panel(self, query_rgb: np.ndarray, explained, localizer: Localizer,
                                     tmp_path: Path):
        frames = localizer.refmap.frames
        gone = FrameTable(frames.ids, frames.names, [str(tmp_path / "moved_away.jpg")] * len(frames), frames.stamps,
                          frames.positions, frames.orientations)
        image = render_hypothesis(query_rgb, explained, gone, lambda row: load_frame_source(gone.sources[row]))
        layout = debug_layout(query_rgb.shape[:2], None)
        panel = box(image, layout.reference_box)
        assert layout.reference_box[2:] == layout.query_box[2:]
        grey = (panel == np.array(MISSING_PANEL, np.uint8)).all(axis=-1)
        assert 0.9 < grey.mean() < 1.0, "a grey panel with its explanation written on it"
        colours = {tuple(c) for c in match_colours(50).tolist()}
        assert not any(tuple(p) in colours for p in panel[~grey].tolist()), "no patch pairs without a reference"
        assert np.array_equal(box(image, layout.query_box), resize_rgb(query_rgb, *layout.query_box[2:][::-1]))

    def test_render_hypothesis_with_its_reference(self, query_rgb: np.ndarray, explained, localizer: Localizer):
        frames = localizer.refmap.frames
        image = render_hypothesis(query_rgb, explained, frames, lambda row: load_frame_source(frames.sources[row]))
        reference = load_frame_source(frames.sources[explained.best_index])
        direct = render_match(query_rgb, reference, explained.explanation, float(explained.scores[0]),
                              explained.confidence, ref_id=int(explained.ids[0]), ref_row=explained.best_index,
                              ref_stamp=float(frames.stamps[explained.best_index]), query_stamp=42.0, rank=1,
                              candidates=len(explained.indices), reference_source=frames.sources[explained.best_index])
        assert np.array_equal(image, direct)

    def test_bad_images_are_refused(self, query_rgb: np.ndarray):
        with pytest.raises(ValueError, match="query image"):
            render_match(query_rgb[..., 0], None, None, 0.0, 0.0)
        with pytest.raises(ValueError, match="reference image"):
            render_match(query_rgb, query_rgb.astype(np.float32), None, 0.0, 0.0)
