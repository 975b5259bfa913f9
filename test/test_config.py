"""Typed configs: validation messages, YAML / ROS params files, config/*.yaml in sync with the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpr_ros.config import ConfigError, config_from_dict, flatten_config, load_config, unflatten
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.map_builder import BuildMapConfig
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.tools.render_configs import CONFIG_FILES, rendered


def test_config_files_match_dataclass_defaults(repo: Path):
    for name, text in rendered().items():
        assert (PACKAGE_ROOT / "config" / name).read_text() == text, f"config/{name} is stale: run `make config`"


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_shipped_config_files_load_to_defaults(repo: Path, name: str):
    cls = CONFIG_FILES[name][0]
    assert load_config(cls, PACKAGE_ROOT / "config" / name, node_name="whatever") == cls()


def test_unknown_key_names_it_and_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) vlad\.clusters.*num_clusters"):
        config_from_dict(BuildMapConfig, {"vlad": {"clusters": 3}})


@pytest.mark.parametrize(("data", "message"), [
    ({"vlad": {"num_clusters": "many"}}, r"vlad\.num_clusters: expected an integer, got 'many'"),
    ({"vlad": {"num_clusters": 1}}, r"vlad\.num_clusters: 1 is below the minimum 2"),
    ({"encoder": {"device": "tpu"}}, r"encoder\.device: 'tpu' is not one of"),
    ({"vlad": {"whiten": "yes"}}, r"vlad\.whiten: expected true or false"),
    ({"vlad": 3}, r"vlad: expected a mapping"),
])
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(BuildMapConfig, data)


def test_cross_field_check():
    with pytest.raises(ConfigError, match="position_sigma_max must be >= position_sigma_min"):
        config_from_dict(LocalizeNodeConfig, {"position_sigma_min": 5.0, "position_sigma_max": 1.0})


def test_flatten_round_trip_uses_ros_dotted_names():
    cfg = config_from_dict(LocalizeNodeConfig, {"map_path": "m", "localizer": {"top_k": 7}})
    flat = flatten_config(cfg)
    assert flat["localizer.top_k"] == 7 and flat["localizer.encoder.device"] == "auto"
    assert config_from_dict(LocalizeNodeConfig, unflatten(flat)) == cfg


def test_params_file_node_section_overrides_wildcard(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text("/**:\n  ros__parameters:\n    map_path: a\n    localizer.top_k: 3\n"
                    "localize:\n  ros__parameters:\n    map_path: b\n")
    cfg = load_config(LocalizeNodeConfig, path, {"localizer.encoder.threads": 1}, node_name="localize")
    assert (cfg.map_path, cfg.localizer.top_k, cfg.localizer.encoder.threads) == ("b", 3, 1)


def test_broken_yaml_names_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_config(BuildMapConfig, path)
