"""The tuned defaults are the values bench/bench_defaults.py chose on the tuning split (bench/splits.py).

A default tuned by hand on the data the README reports would make those figures optimistic; this test ties
each tuned default to the stored choice, so changing one means re-running ``python -m bench defaults``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.splits import CORRIDOR, NORDLAND
from vpr_ros.core.loop_closure import LoopClosureConfig
from vpr_ros.core.sequence import SequenceConfig
from vpr_ros.core.vlad import VladConfig

#: setting-path prefix -> the typed config that owns it
OWNERS = {"vlad": VladConfig, "sequence": SequenceConfig, "loop_closure": LoopClosureConfig}
TUNED = ("vlad.num_clusters", "vlad.whiten", "vlad.whiten_regularisation", "sequence.frame_top_k",
         "loop_closure.min_score")


@pytest.fixture(scope="module")
def stored(repo: Path) -> dict:
    return json.loads((repo / "bench" / "results" / "defaults.json").read_text())


def test_every_tuned_default_has_a_stored_choice(stored: dict):
    assert sorted(stored["chosen"]) == sorted(TUNED)


@pytest.mark.parametrize("key", TUNED)
def test_typed_default_equals_the_value_chosen_on_the_tuning_split(stored: dict, key: str):
    section, name = key.split(".")
    assert getattr(OWNERS[section](), name) == stored["chosen"][key], \
        f"{key}: default differs from bench/results/defaults.json; re-run `python -m bench defaults`"


def test_choices_were_made_on_the_split_defined_today(stored: dict):
    assert stored["splits"] == {"corridor": json.loads(json.dumps(CORRIDOR.describe())),
                                "nordland_part1": json.loads(json.dumps(NORDLAND.describe()))}


@pytest.mark.parametrize("split", [CORRIDOR, NORDLAND], ids=lambda s: s.name)
def test_tuning_and_held_out_places_are_disjoint_with_a_gap(split):
    assert split.tuning.stop + split.gap == split.held_out.start and split.gap >= split.tolerance
    assert not set(split.tuning.rows.tolist()) & set(split.held_out.rows.tolist())
    reference, query = split.sources("held_out")
    assert len(reference) == len(query) == len(split.held_out)
    assert reference.frames.ids.tolist() == list(range(len(split.held_out)))
    assert reference.frames.names[0] == query.frames.names[0]  # frame-aligned traversals: same place, same name
    assert reference.load_image(0).shape == query.load_image(0).shape
