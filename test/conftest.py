"""Test session setup: loopback-only DDS in a domain of its own, shared real data, a corridor map, the rclpy
graph fixtures, and the skip policy (test/capabilities.py: only allow-listed skips, all printed at the end)."""

from __future__ import annotations

import os
import random

# Network rule (before anything imports rclpy): DDS discovery stays on loopback, and each test session
# uses its own domain so parallel sessions (CI, a developer's demo) never see each other's topics.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))

# OpenMP threads that busy-wait between operators (torch's default) starve every other process on a small
# shared machine, and each other: measured on 2 busy cores, the training test took minutes instead of ~25 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from capabilities import CAPABILITIES, allowed_capability, has

from vpr_ros.core.paths import PACKAGE_ROOT

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
DEFAULT_MODEL = PACKAGE_ROOT / "models" / "efficientnet_lite0_b10.onnx"


# ---- Skip policy ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Skip:
    nodeid: str
    reason: str
    capability: str | None  # None: the reason is not in the allow-list of test/capabilities.py


class SkipLedger:
    """Every skip of the session, from collection (module-level skips) and from test setup and calls.

    A plugin object rather than conftest hooks: conftest hooks only see reports of tests below test/, and the
    doctests of vpr_ros/core must be counted too (a doctest whose examples are all ``+SKIP`` is a skip)."""

    def __init__(self) -> None:
        self.skips: list[Skip] = []
        self.verdict = ""  # set at the end of the session when a skip is not allow-listed

    def record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        assert isinstance(report.longrepr, tuple), report.longrepr
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        self.skips.append(Skip(report.nodeid, reason, allowed_capability(reason)))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.record(report)

    @property
    def unexpected(self) -> list[Skip]:
        return [s for s in self.skips if s.capability is None]


LEDGER = pytest.StashKey[SkipLedger]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(capability): skip unless this machine has the capability "
                            f"(one of {', '.join(CAPABILITIES)}; test/capabilities.py says why each may be missing)")
    config.stash[LEDGER] = ledger = SkipLedger()
    config.pluginmanager.register(ledger, "vpr_ros_skip_ledger")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        (name,) = mark.args
        if name not in CAPABILITIES:
            pytest.fail(f"@pytest.mark.requires({name!r}): unknown capability; test/capabilities.py lists "
                        f"{', '.join(CAPABILITIES)}", pytrace=False)
        if not has(name):
            pytest.skip(CAPABILITIES[name].skip_reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ledger = session.config.stash[LEDGER]
    unexpected = ledger.unexpected
    if not unexpected:
        return
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    ledger.verdict = (f"FAILED: {len(unexpected)} skip(s) for a reason not allow-listed in test/capabilities.py "
                      f"(a required package or shipped file missing or broken?), first: {unexpected[0].nodeid}: "
                      f"{unexpected[0].reason}")
    if session.config.pluginmanager.get_plugin("terminalreporter") is None:
        print(ledger.verdict, file=sys.stderr)  # else pytest_terminal_summary prints it below the list of skips


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    ledger = config.stash[LEDGER]
    if not ledger.skips:
        terminalreporter.write_line("skips: none (allow-list: test/capabilities.py)")
        return
    terminalreporter.section(f"skips ({len(ledger.skips)}; allow-list: test/capabilities.py)", sep="-")
    for skip in ledger.skips:
        tag = f"[{skip.capability}]" if skip.capability else "[NOT ALLOW-LISTED]"
        terminalreporter.write_line(f"{tag} {skip.nodeid}: {skip.reason}", red=skip.capability is None)
    if ledger.verdict:
        terminalreporter.write_line(ledger.verdict, red=True, bold=True)


# ---- Shared data ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corridor() -> Path:
    """The real corridor dataset shipped in data/corridor (VPR-Bench, MIT)."""
    path = REPO / "data" / "corridor"
    assert (path / "ref").is_dir(), f"{path} missing: the corridor data ships with the repository"
    return path


@pytest.fixture(scope="session")
def default_model() -> Path:
    assert DEFAULT_MODEL.exists(), f"{DEFAULT_MODEL} missing: it ships with the repository (`make models` rebuilds it)"
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def encoder(default_model: Path):
    from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder

    return OnnxEncoder(EncoderConfig(model=str(default_model)))


@pytest.fixture(scope="session")
def corridor_map(tmp_path_factory: pytest.TempPathFactory, corridor: Path, encoder) -> Path:
    """A map of the corridor reference traversal with the default settings, built once per session."""
    from vpr_ros.core.map_builder import BuildMapConfig, build_map
    from vpr_ros.io.images import folder_source

    out = tmp_path_factory.mktemp("maps") / "corridor"
    build_map(folder_source(corridor / "ref", corridor / "ref_poses.csv"), out, BuildMapConfig(),
              progress=False, encoder=encoder)
    return out


@pytest.fixture(scope="session")
def corridor_ground_truth(corridor: Path) -> list[np.ndarray]:
    rows = np.load(corridor / "ground_truth_new.npy", allow_pickle=True)
    return [np.asarray(r[1], dtype=np.int64) for r in rows]


@pytest.fixture(scope="session")
def corridor_patch_map(tmp_path_factory: pytest.TempPathFactory, corridor: Path, encoder) -> Path:
    """The corridor map with a Patch-NetVLAD patch store of the ``speed`` configuration (int8 patches)."""
    from vpr_ros.core.map_builder import BuildMapConfig, build_map
    from vpr_ros.core.patchnetvlad.store import PatchStoreConfig
    from vpr_ros.io.images import folder_source

    out = tmp_path_factory.mktemp("maps") / "corridor_speed"
    build_map(folder_source(corridor / "ref", corridor / "ref_poses.csv"), out,
              BuildMapConfig(patches=PatchStoreConfig(preset="speed")), progress=False, encoder=encoder)
    return out


@pytest.fixture(scope="session")
def corridor_rule_labels(tmp_path_factory: pytest.TempPathFactory, corridor: Path) -> Path:
    """Rule-based label maps (colour/position rules, not a segmenter) of every corridor image, on disk in a
    folder tree parallel to data/corridor (labels/ref/0000000.png ...), as real label maps would be."""
    from vpr_training.data.rule_labels import write_rule_based_label_maps

    out = tmp_path_factory.mktemp("labels") / "corridor"
    write_rule_based_label_maps(corridor, out, progress=False)
    return out


@pytest.fixture
def graph():
    """A :class:`~vpr_ros.nodes.harness.RosGraph` of the test's own (rclpy context, 4 executor threads), entered;
    every node started on it is stopped and the context shut down when the test ends."""
    from vpr_ros.nodes.harness import RosGraph

    with RosGraph(threads=4) as g:
        yield g


@pytest.fixture
def start_localize(graph, default_model: Path):
    """Start an in-process localize node on ``graph`` and its client; returns the LocalizeEndpoint once the
    node answers. Defaults: the default model, /diagnostics every 0.2 s, the map must load (``require_map``);
    further node parameters as keywords (dotted names through ``**{...}``)."""
    from vpr_ros.nodes.harness import LocalizeLaunch

    def start(map_path: Path, namespace: str, model: Path | str | None = None, require_map: bool = True,
              **params):
        launch = LocalizeLaunch({"map_path": str(map_path), "localizer.encoder.model": str(model or default_model),
                                 "diagnostics_period": 0.2, **params}, namespace=namespace)
        return graph.start_localize(launch, client_name=f"{namespace.strip('/')}_client", ready_timeout=30,
                                    require_map=require_map)

    return start


@pytest.fixture
def localize_via_node():
    """Run a real localize node (in-process, loopback DDS) with ``model`` on ``map_path``, publish ``images`` as
    sensor_msgs/Image one at a time and return the top-1 reference id of each answer (-1: no answer)."""
    from collections.abc import Sequence

    from vpr_ros.core.image import load_rgb
    from vpr_ros.nodes.harness import LocalizeLaunch, run_localize
    from vpr_ros.nodes.replay import rgb_to_image_msg

    def run(map_path: Path, model: Path, images: Sequence[Path], namespace: str = "/vpr_model") -> list[int]:
        launch = LocalizeLaunch({"map_path": str(map_path), "localizer.encoder.model": str(model),
                                 "diagnostics_period": 0.2}, namespace=namespace)
        with run_localize(launch, threads=4, ready_timeout=30) as localize:
            top1 = []
            for i, path in enumerate(images):
                answer = localize.client.send_and_wait(rgb_to_image_msg(load_rgb(path), 100.0 + i), timeout=30)
                top1.append(int(answer.ref_ids[0]) if answer is not None else -1)
            return top1

    return run
