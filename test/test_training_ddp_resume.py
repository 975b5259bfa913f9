"""Distributed training (torchrun, 2 CPU processes, gloo) through the real CLI, and resuming a run."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TINY = ["--set", "epochs=1", "--set", "iterations_per_epoch=4", "--set", "val.count=40",
        "--set", "model.kmeans_images=20", "--set", "probe_tuples=4", "--set", "model.pca_dim=16"]


def cli_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), str(repo / "training"), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return env


def roots(repo: Path) -> list[str]:
    root = str(repo / "data" / "nordland_part1")
    return ["--set", f"train.root={root}", "--set", f"val.root={root}"]


def run_watching_listeners(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float
                           ) -> tuple[int, str, set[tuple[str, int, str]]]:
    """Run ``cmd``; returns its exit status, stderr, and every (address, port, process) that listened on TCP in
    its process tree while it ran (polled, so a listener that lives under ~0.1 s may be missed)."""
    listeners: set[tuple[str, int, str]] = set()
    with open(cwd / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                except psutil.NoSuchProcess:
                    break
                for member in tree:
                    try:
                        listeners.update((c.laddr.ip, c.laddr.port, " ".join(member.cmdline()[:3]))
                                         for c in member.net_connections("inet") if c.status == psutil.CONN_LISTEN)
                    except psutil.Error:  # exited between listing and asking
                        continue
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        err.seek(0)
        return code, err.read(), listeners


def test_two_process_gloo_run(tmp_path: Path, repo: Path):
    """Through torchrun (with its stores served on 127.0.0.1, see test/loopback_torchrun.py): nothing the run
    opens listens on any interface but loopback."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, str(repo / "test" / "loopback_torchrun.py"), "--nproc_per_node", "2",
           "-m", "vpr_training.cli", "--config", str(repo / "training/configs/nordland_cpu_small.yaml"),
           "--out", str(out), "--no-progress", *roots(repo), *TINY]
    code, stderr, listeners = run_watching_listeners(cmd, cli_env(repo), tmp_path, timeout=600)
    assert code == 0, stderr[-3000:]
    assert listeners, "no listening socket seen: the check would pass vacuously"
    exposed = sorted(lst for lst in listeners if not ipaddress.ip_address(lst[0]).is_loopback)
    assert not exposed, f"listening beyond loopback: {exposed}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu"
    (epoch,) = metrics["history"]
    assert epoch["iterations"] + epoch["trivial_batches"] == 4 and epoch["iterations"] >= 1
    assert epoch["cache_refreshes"] == 1
    assert (out / "best.pt").is_file() and list((out / "tensorboard").glob("events.*"))
    assert stderr.count("best epoch") == 1  # only rank 0 reports


def test_resume_continues_from_the_last_epoch(tmp_path: Path, repo: Path):
    from vpr_training.config import load_train_config
    from vpr_training.trainer import Trainer, TrainerHook, load_checkpoint

    class Recorder(TrainerHook):
        def __init__(self):
            self.events = []

        def on_epoch_end(self, trainer, epoch, record):
            self.events.append(("epoch", epoch, record["iterations"]))

        def on_batch_end(self, trainer, batch, parts):
            self.events.append(("batch", batch.iteration, round(parts["total"], 6)))

    root = str(repo / "data" / "nordland_part1")
    overrides = {"train.root": root, "val.root": root, "iterations_per_epoch": 3, "val.count": 40,
                 "model.kmeans_images": 20, "probe_tuples": 4, "model.pca_dim": 16}
    cfg = load_train_config(repo / "training/configs/nordland_cpu_small.yaml", {**overrides, "epochs": 1})
    first = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    cfg2 = load_train_config(repo / "training/configs/nordland_cpu_small.yaml", {**overrides, "epochs": 2})
    recorder = Recorder()
    second = Trainer(cfg2, tmp_path / "run", hooks=[recorder], resume=True, progress=False).run()
    # only epoch 2 ran, its iterations numbered on from epoch 1's
    assert [e[:2] for e in recorder.events if e[0] == "epoch"] == [("epoch", 2)]
    assert {e[1] for e in recorder.events if e[0] == "batch"} <= {3, 4, 5}
    assert [h["epoch"] for h in second.history] == [1, 2]
    assert second.history[0] == first.history[0]  # epoch 1 was restored, not trained again
    assert second.initial == first.initial
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 2 and last["iteration"] == 6
    assert len(last["probe"]) == len(load_checkpoint(tmp_path / "run" / "init.pt")["probe"])


def test_cli_help_and_bad_settings(repo: Path, tmp_path: Path):
    env = cli_env(repo)
    proc = subprocess.run([sys.executable, "-m", "vpr_training.cli", "--help"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "torchrun" in proc.stdout and "--resume" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "vpr_training.cli", "--out", str(tmp_path / "x"),
                           "--set", "mining.margin=-1"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "mining.margin" in proc.stderr and "below the minimum" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "vpr_training.cli", "--out", str(tmp_path / "x"),
                           "--set", "train.kind=nordland", "--set", f"train.root={tmp_path / 'nowhere'}"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nowhere" in proc.stderr
