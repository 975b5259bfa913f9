"""Map building on Ray (issue 17): ``build_map --executor ray`` writes the map a single-process build writes.

One local Ray cluster for the module (2 CPUs, 127.0.0.1 only, started as ``--executor ray`` starts one; the builds
below find this process connected and use it). Compared with single-process builds of the same frames, both maps of
format version 2: the frame table (frames.npz, column by column and byte for byte), the index (its vectors
reconstructed, its file and its manifest record), the fitted head, the per-frame arrays (Patch-NetVLAD store) and
the descriptors bit for bit -- the chunks keep their batch boundaries wherever they are encoded, and the ONNX Runtime
threads are the same (``encoder.threads`` = 0 on both sides). A Ray worker killed (SIGKILL) in the middle of a
build loses its chunks to the other worker and the map is still equal; a driver killed in the middle leaves its
saved chunks, which the next build reuses. Without the ``ray`` package the command says how to install it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from vpr_ros.cli.build_map import main as build_map_main
from vpr_ros.cli.common import run_cli
from vpr_ros.core.encoders import EncoderConfig
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.map_builder import BuildMapConfig, Chunk, build_map
from vpr_ros.core.ray_executor import INSTALL_HINT, ChunkWorker, RayExecutor, disconnect, start_local_cluster
from vpr_ros.core.refmap import FORMAT_VERSION, ReferenceMap
from vpr_ros.errors import InputError
from vpr_ros.io.images import folder_source

REPO = Path(__file__).resolve().parents[1]
NORDLAND_FRAMES = 240
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def ray_cluster():
    # A local cluster is always a new one: not the cluster RAY_ADDRESS (or one `ray start` left) names, which
    # ray.init() would otherwise join -- here an address where nothing listens, so joining it would fail.
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = "127.0.0.1:9"
    try:
        ray = start_local_cluster(num_cpus=2)
    finally:
        os.environ.pop("RAY_ADDRESS") if saved is None else os.environ.update(RAY_ADDRESS=saved)
    yield ray
    disconnect(ray)


@pytest.fixture(scope="module")
def nordland_subset() -> FrameSource:
    """The first frames of the Nordland summer traversal (64x32 PNGs)."""
    source = folder_source(REPO / "data" / "nordland_part1" / "summer")
    return source.take(np.arange(NORDLAND_FRAMES))


@pytest.fixture(scope="module")
def nordland_map(tmp_path_factory: pytest.TempPathFactory, nordland_subset: FrameSource, encoder) -> Path:
    """Single-process map of the Nordland subset (chunks of 48 frames = 6 batches of 8)."""
    out = tmp_path_factory.mktemp("maps") / "nordland"
    build_map(nordland_subset, out, BuildMapConfig(chunk_size=48), progress=False, encoder=encoder)
    return out


def index_vectors(index) -> np.ndarray:
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def manifest_of(path: Path) -> dict:
    return yaml.safe_load((path / "manifest.yaml").read_text())


def assert_same_map(built: Path, reference: Path) -> None:
    """Equal maps of format version 2: the same frame table (frames.npz), descriptors, index, head and arrays, their
    contents compared one by one so that a difference names what differs, the same index record, and the same files
    byte for byte."""
    mb, mr = manifest_of(built), manifest_of(reference)
    assert mb["format_version"] == mr["format_version"] == FORMAT_VERSION
    assert mb["files"].keys() == mr["files"].keys()
    assert "frames.npz" in mr["files"] and "frames.csv" not in mr["files"]
    a, b = ReferenceMap.load(built), ReferenceMap.load(reference)
    # The binary frame table (frames.npz) column by column, dtypes included, then as the file it is.
    for column in ("ids", "stamps", "positions", "orientations"):
        col_a, col_b = getattr(a.frames, column), getattr(b.frames, column)
        assert col_a.dtype == col_b.dtype, f"frame column {column}: {col_a.dtype} != {col_b.dtype}"
        np.testing.assert_array_equal(col_a, col_b, err_msg=f"frame column {column}")
    assert list(a.frames.names) == list(b.frames.names), "frame names differ"
    assert list(a.frames.sources) == list(b.frames.sources), "frame sources differ"
    assert (built / "frames.npz").read_bytes() == (reference / "frames.npz").read_bytes(), "frames.npz differs"
    assert a.descriptors.dtype == b.descriptors.dtype == np.float32
    assert a.descriptors.shape == b.descriptors.shape
    # Bit for bit: the float32 patterns as integers, so that even -0.0 / 0.0 or NaN payloads would count.
    np.testing.assert_array_equal(a.descriptors.view(np.uint32), b.descriptors.view(np.uint32))
    assert type(a.index) is type(b.index) and a.index.ntotal == b.index.ntotal == len(b)
    np.testing.assert_array_equal(index_vectors(a.index), index_vectors(b.index))
    # The index record (factory auto's choice, search settings, training frame count); only the training time
    # may differ.
    index_a, index_b = dict(mb["index"]), dict(mr["index"])
    assert (index_a.pop("trained_at") == "") == (index_b.pop("trained_at") == "")
    assert index_a == index_b
    assert (a.head is None) == (b.head is None)
    if b.head is not None:
        head_a, head_b = a.head.to_arrays(), b.head.to_arrays()
        assert head_a.keys() == head_b.keys()
        for name in head_b:
            np.testing.assert_array_equal(head_a[name], head_b[name], err_msg=f"head array {name}")
    assert a.arrays.keys() == b.arrays.keys()
    for name in b.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=f"map array {name}")
    assert a.sections == b.sections
    # Every data file byte for byte (the manifest's digests), but head.npz, whose zip members carry the time
    # np.savez wrote them (its arrays are equal above); the manifest itself holds times and provenance.
    for rel in mr["files"].keys() - {"head.npz"}:
        assert mb["files"][rel] == mr["files"][rel], f"{rel} differs"


def ray_processes() -> list[psutil.Process]:
    """This test process's descendants that run Ray (GCS, raylet, workers): only ours, never another session's."""
    return psutil.Process().children(recursive=True)


def chunk_workers(since: float = 0.0) -> list[psutil.Process]:
    """Our ChunkWorker actor processes (Ray titles them ``ray::ChunkWorker[.method]``) started at ``since`` or later."""
    found = []
    for proc in ray_processes():
        try:
            cmdline = proc.cmdline()
            if cmdline and cmdline[0].startswith("ray::ChunkWorker") and proc.create_time() >= since:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def test_local_cluster_listens_on_loopback_only(ray_cluster):
    worker = ray_cluster.remote(ChunkWorker).remote(EncoderConfig(model="thumbnail:64x32,patch=8"), None, (32, 64),
                                                    [])
    pid = ray_cluster.get(worker.start.remote(), timeout=120)["pid"]
    try:
        listening = {}
        for proc in ray_processes():
            try:
                sockets = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            for s in sockets:
                if s.status == psutil.CONN_LISTEN:
                    listening[(proc.pid, proc.name(), s.laddr.port)] = s.laddr.ip
        names = {name for _, name, _ in listening}
        assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names
        assert pid in {p for p, _, _ in listening}, "the actor's own server was not seen"
        outside = {k: ip for k, ip in listening.items() if ip not in LOOPBACK_ADDRESSES}
        assert not outside, f"Ray processes listening beyond the loopback: {outside}"
        assert ray_cluster.util.get_node_ip_address() == "127.0.0.1"
    finally:
        ray_cluster.kill(worker)


def test_corridor_map_built_on_ray_equals_single_process(ray_cluster, corridor, corridor_patch_map, tmp_path):
    out = tmp_path / "corridor_ray"
    # The CLI as a user runs it: 2 workers, chunks of 16 frames (2 batches), the Patch-NetVLAD speed store; the
    # reference is the session's single-process map (chunks of 256) with the same store.
    code = run_cli(build_map_main, ["--images", str(corridor / "ref"), "--poses", str(corridor / "ref_poses.csv"),
                                    "-o", str(out), "--executor", "ray", "--workers", "2", "--set", "chunk_size=16",
                                    "--set", "patches.preset=speed", "-q"])
    assert code == 0
    assert ray_cluster.is_initialized(), "the build must leave a cluster it did not start running"
    assert not (tmp_path / ".corridor_ray.partial").exists()
    assert_same_map(out, corridor_patch_map)


def test_nordland_subset_built_on_ray_equals_single_process(ray_cluster, nordland_subset, nordland_map, encoder,
                                                            tmp_path):
    out = tmp_path / "nordland_ray"
    executor = RayExecutor(workers=2)
    build_map(nordland_subset, out, BuildMapConfig(chunk_size=48), progress=False, encoder=encoder,
              executor=executor)
    assert executor.stats.workers == 2
    assert executor.stats.chunks == NORDLAND_FRAMES // 48 and executor.stats.frames == NORDLAND_FRAMES
    assert_same_map(out, nordland_map)


def test_killed_ray_worker_loses_only_its_chunks(ray_cluster, nordland_subset, nordland_map, encoder, tmp_path,
                                                 caplog):
    out = tmp_path / "nordland_kill"
    work = tmp_path / ".nordland_kill.partial"
    killed: list[int] = []
    stop = threading.Event()

    started = time.time()

    def kill_a_worker_after_the_first_chunk() -> None:
        while not stop.is_set():
            workers = chunk_workers(since=started)  # not an earlier test's, if one lingers
            if workers and any(work.glob("chunk_*.npz")):
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker_after_the_first_chunk, daemon=True)
    killer.start()
    executor = RayExecutor(workers=2)
    # Chunks of 8 frames (one batch each: the reference's chunks of 48 make the same batches).
    try:
        with caplog.at_level(logging.WARNING, logger="vpr_ros.core.ray_executor"):
            build_map(nordland_subset, out, BuildMapConfig(chunk_size=8), progress=False, encoder=encoder,
                      executor=executor)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed: the build ended before the first chunk file was seen"
    lost = [r.getMessage() for r in caplog.records if "died while encoding chunk" in r.getMessage()]
    assert lost and f"pid {killed[0]}" in lost[0], caplog.text
    assert executor.stats.lost == len(lost) >= 1
    assert executor.stats.chunks == NORDLAND_FRAMES // 8  # every chunk delivered once: the lost ones again, none twice
    assert_same_map(out, nordland_map)


DRIVER = """
import sys
import numpy as np
from vpr_ros.core.map_builder import BuildMapConfig, Chunk, build_map
from vpr_ros.core.ray_executor import RayExecutor
from vpr_ros.io.images import folder_source
source = folder_source(sys.argv[1]).take(np.arange(int(sys.argv[2])))
build_map(source, sys.argv[3], BuildMapConfig(chunk_size=8), progress=False, executor=RayExecutor(sys.argv[4], 2))
"""


def subprocess_env() -> dict[str, str]:
    """This process's environment with this checkout's vpr_ros first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "ros" / "vpr_ros"),
                                                         os.environ.get("PYTHONPATH", "")])}


def test_killed_driver_resumes_from_its_saved_chunks(ray_cluster, nordland_subset, nordland_map, encoder, tmp_path):
    # The driver is a process of its own joining this module's cluster (as build_map --executor ray:ADDRESS
    # does), killed once it has saved some chunks; the build started again here reuses them. Chunks of 8 frames
    # (one batch) make the same batches as the reference's chunks of 48.
    out = tmp_path / "nordland_resume"
    work = tmp_path / ".nordland_resume.partial"
    address = ray_cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO / "data" / "nordland_part1" / "summer"),
                               str(NORDLAND_FRAMES), str(out), address],
                              env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(work.glob("chunk_*.npz"))) < 3 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        driver.send_signal(signal.SIGKILL)
    finally:
        _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL, f"the driver ended before it was killed:\n{stderr}"
    saved = len(list(work.glob("chunk_*.npz")))
    total = NORDLAND_FRAMES // 8
    assert 3 <= saved < total, saved
    assert not out.exists()

    executor = RayExecutor(workers=2)
    build_map(nordland_subset, out, BuildMapConfig(chunk_size=8), progress=False, encoder=encoder, executor=executor)
    assert executor.stats.chunks == total - saved  # the saved chunks were not encoded again
    assert_same_map(out, nordland_map)


def test_more_workers_than_the_local_cluster_has_is_refused(ray_cluster, nordland_subset, encoder):
    # 3 workers of 1 CPU on a 2-CPU local cluster would wait for resources that never come.
    chunks = [Chunk(0, 0, 8)]
    with pytest.raises(InputError, match=r"--workers 3 need 3 CPUs \(encoder.threads=0\), the Ray cluster has 2: "
                                         r"lower --workers or encoder.threads"):
        list(RayExecutor(workers=3).encode_chunks(nordland_subset, chunks, encoder, None, (32, 64), []))
    assert ray_cluster.is_initialized(), "a cluster the executor did not start must stay up"


def test_bad_executor_arguments_exit_2(tmp_path, corridor, capsys):
    base = ["--images", str(corridor / "ref"), "-o", str(tmp_path / "m")]
    assert run_cli(build_map_main, [*base, "--executor", "spark"]) == 2
    assert "--executor 'spark': expected local, ray, ray://HOST:PORT or ray:ADDRESS" in capsys.readouterr().err
    assert run_cli(build_map_main, [*base, "--workers", "2"]) == 2
    assert "--workers needs --executor ray" in capsys.readouterr().err
    # --merge encodes nothing, so an executor there would be silently unused.
    assert run_cli(build_map_main, ["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m"),
                                    "--executor", "ray"]) == 2
    assert "--merge joins existing maps without encoding images: it takes no --images, --bag, --append, " \
           "--executor or --workers" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_without_ray_the_command_says_how_to_install_it(tmp_path, corridor):
    # A process in which `import ray` fails, as where the package is not installed.
    program = ("import sys; sys.modules['ray'] = None; from vpr_ros.cli.build_map import entry_point; "
               "sys.argv[0] = 'build_map'; entry_point()")
    out = tmp_path / "m"
    result = subprocess.run([sys.executable, "-c", program, "--images", str(corridor / "ref"), "-o", str(out),
                             "--executor", "ray"], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: --executor ray needs the optional package ray, which is not "
                                          f"installed: {INSTALL_HINT}"]
    assert "requirements/ray.txt" in INSTALL_HINT
    assert not out.exists() and not (tmp_path / ".m.partial").exists()


def test_one_ray_pin_everywhere(ray_cluster):
    # requirements/ray.txt, the package's `ray` extra, the install hint and the Ray these tests ran with.
    from vpr_ros.core.ray_executor import RAY_REQUIREMENT

    pins = [line.strip() for line in (REPO / "requirements" / "ray.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins == [RAY_REQUIREMENT]
    assert f'"ray": ["{RAY_REQUIREMENT}"]' in (REPO / "ros" / "vpr_ros" / "setup.py").read_text()
    assert "-r ray.txt" in (REPO / "requirements" / "dev.txt").read_text().splitlines()
    assert f"ray=={ray_cluster.__version__}" == RAY_REQUIREMENT
