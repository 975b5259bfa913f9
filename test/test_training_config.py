"""The training config loader (``vpr_training.config.load_train_config``): files that extend a ``base`` file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vpr_ros.errors import ConfigError
from vpr_training.config import AppsvrConfig, load_train_config, read_config_file

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
BASE = "appsvr_nordland_cpu_small.yaml"
#: What each APPSVR ablation changed in model.appsvr of the base file when they were full files (issue 11).
ABLATIONS = {
    "appsvr_nordland_cpu_small_L1.yaml": {"pyramid_levels": 1, "parametric_norm": False, "shadows_per_cluster": 0},
    "appsvr_nordland_cpu_small_L3.yaml": {"parametric_norm": False, "shadows_per_cluster": 0},
    "appsvr_nordland_cpu_small_PN_L3.yaml": {"shadows_per_cluster": 0},
    "appsvr_nordland_cpu_small_SC_L3.yaml": {"parametric_norm": False},
}


def write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_the_base_is_the_full_appsvr_sc_pn_l3_run():
    base = load_train_config(CONFIGS / BASE)
    assert "base" not in yaml.safe_load((CONFIGS / BASE).read_text())
    assert base.model.appsvr == AppsvrConfig(local_weighting=True, pyramid_levels=3, parametric_norm=True,
                                             shadows_per_cluster=2, candidates_per_class=8, irrelevant_classes=(0,))
    assert (base.model.name, base.model.num_clusters, base.epochs, base.image_height, base.image_width) == (
        "appsvr", 16, 2, 64, 128)
    assert (base.train.kind, base.train.count, base.train.labels, base.val.first) == (
        "nordland", 240, "out/labels/nordland_part1", 1200)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_is_the_base_with_its_differences(name: str):
    assert yaml.safe_load((CONFIGS / name).read_text())["base"] == BASE
    base = read_config_file(CONFIGS / BASE)
    expected = {**base, "model": {**base["model"], "appsvr": {**base["model"]["appsvr"], **ABLATIONS[name]}}}
    assert read_config_file(CONFIGS / name) == expected
    full = load_train_config(CONFIGS / BASE)
    cfg = load_train_config(CONFIGS / name)
    assert cfg.model.appsvr == AppsvrConfig(**{**vars(full.model.appsvr), **ABLATIONS[name]})
    assert cfg.train == full.train and cfg.mining == full.mining and cfg.optim == full.optim
    assert cfg.validation == full.validation and cfg.epochs == full.epochs


def test_bases_chain_and_mappings_merge_key_by_key(tmp_path: Path):
    write(tmp_path / "a.yaml", {"epochs": 5, "validation": {"recall_ns": [1, 5, 10]}, "model": {
        "num_clusters": 8, "appsvr": {"pyramid_levels": 2, "shadows_per_cluster": 1}}})
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "b.yaml", {"base": "../a.yaml", "model": {"appsvr": {"pyramid_levels": 1}},
                                        "validation": {"recall_ns": [1]}})
    write(tmp_path / "sub" / "c.yaml", {"base": "b.yaml", "model.num_clusters": 4, "epochs": 7})
    cfg = load_train_config(tmp_path / "sub" / "c.yaml", {"model.appsvr.shadows_per_cluster": 3})
    assert cfg.epochs == 7 and cfg.model.num_clusters == 4  # the file over its base, dotted keys too
    assert cfg.model.appsvr.pyramid_levels == 1  # from b, over a
    assert cfg.model.appsvr.shadows_per_cluster == 3  # --set over every file
    assert cfg.validation.recall_ns == (1,)  # a list replaces, it does not extend
    assert read_config_file(tmp_path / "sub" / "b.yaml")["model"] == {
        "num_clusters": 8, "appsvr": {"pyramid_levels": 1, "shadows_per_cluster": 1}}


def test_cycles_and_bad_bases_are_refused_naming_the_file(tmp_path: Path):
    write(tmp_path / "a.yaml", {"base": "b.yaml", "epochs": 1})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=r"b\.yaml: 'base' chain comes back to a\.yaml \(a\.yaml -> b\.yaml -> a"):
        load_train_config(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", {"base": "./self.yaml"})
    with pytest.raises(ConfigError, match=r"comes back to self\.yaml"):
        read_config_file(tmp_path / "self.yaml")
    write(tmp_path / "lost.yaml", {"base": "missing.yaml"})
    with pytest.raises(ConfigError, match=r"missing\.yaml does not exist \(the 'base' of .*lost\.yaml\)"):
        load_train_config(tmp_path / "lost.yaml")
    write(tmp_path / "list.yaml", {"base": ["a.yaml"]})
    with pytest.raises(ConfigError, match=r"list\.yaml: 'base' must name a YAML file"):
        load_train_config(tmp_path / "list.yaml")
    write(tmp_path / "typo.yaml", {"base": "a.yaml", "epochz": 3})
    write(tmp_path / "a.yaml", {"epochs": 1})
    with pytest.raises(ConfigError, match=r"unknown setting.*epochz"):
        load_train_config(tmp_path / "typo.yaml")
