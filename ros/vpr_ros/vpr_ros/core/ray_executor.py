"""Map building on Ray (``build_map --executor ray``): the chunks of the encoding pass on Ray actors.

Ray (https://docs.ray.io, PyPI ``ray``, pinned in requirements/ray.txt) is optional: nothing here imports it
until a :class:`RayExecutor` is made, and without it that says in one line how to install it.

How the work is split, and why the map equals the single-process build of the same frames:

* The unit of work is a chunk of :func:`vpr_ros.core.map_builder.encode_in_chunks` (``chunk_size`` frames), and
  an actor encodes it with :func:`~vpr_ros.core.map_builder.encode_chunk`, the very function a single-process
  build runs. Batches start at every chunk's first frame wherever the chunk is encoded, so the batch boundaries
  do not depend on how chunks are spread over actors; with the same ``encoder.threads`` (ONNX Runtime intra-op
  threads) the descriptors are bitwise those of a single-process build (on a local cluster, whose actors also get
  the driver's BLAS thread count: :func:`blas_threads_env`).
* Each actor holds one encoder (one ONNX Runtime session, built from the build's ``encoder`` settings) and the
  fitted head (vocabulary + PCA), which the driver fits once on its sample (pass 1, as without Ray) and puts into
  the object store once (``ray.put``) for every actor, as it does with the extra per-frame extractors.
* The driver (the ``build_map`` process) loads each chunk's images -- so every frame source works, bags
  included, and workers on other machines need neither the images nor a shared file system -- and sends them
  with the call; the actor returns the chunk's arrays and the driver writes the chunk file atomically as it
  arrives (:func:`vpr_ros.core.files.atomic_savez`), in the order chunks finish. Chunk files are independent
  and named by their index, so that order does not matter to a resumed build, and the work directory keeps a
  single writer, the process that holds the map's lock. Each actor has at most two calls queued (the one it
  encodes and the next, whose images are then already in the object store, so it never waits on the driver).
* Losses: a killed driver loses the chunks in flight (at most two per actor); starting the same command again
  (with or without Ray: the work directory does not depend on the executor) resumes from the saved chunks. A
  dead actor loses the chunk it was encoding: its chunks go to the other actors and a replacement actor is
  started, with a warning naming the actor, its pid and the chunk; a chunk lost :data:`MAX_ATTEMPTS` times
  stops the build (the saved chunks remain for a resume).

Placement: with GPUs in the cluster (and ``encoder.device`` not ``cpu``) every actor takes one (``num_gpus=1``;
Ray sets its CUDA_VISIBLE_DEVICES and ONNX Runtime's CUDA provider is used where the installed ONNX Runtime has
it); otherwise an actor takes ``encoder.threads`` CPUs (1 when that is 0, "one per core").

A local cluster (``--executor ray``) is started for the run and stopped after it: every Ray process listens on
127.0.0.1 only, without dashboard and without usage statistics (see :func:`start_local_cluster`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from vpr_ros.core.encoders import Encoder, EncoderConfig
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.map_builder import Chunk, FrameExtractor, encode_chunk
from vpr_ros.core.vlad import VladHead
from vpr_ros.errors import InputError

log = logging.getLogger(__name__)

#: The Ray release the tests and benchmarks ran with (requirements/ray.txt pins the same).
RAY_REQUIREMENT = "ray==2.60.0"
INSTALL_HINT = f"pip install -r requirements/ray.txt (that is: pip install {RAY_REQUIREMENT})"
#: Times a chunk is handed to an actor before the build gives up on it (each loss is a dead actor).
MAX_ATTEMPTS = 3
#: Calls queued per actor: the chunk it encodes and the next one, already loaded.
CALLS_PER_ACTOR = 2
#: Seconds to wait for actors to start (a cluster without the resources asked for never starts them).
START_TIMEOUT_S = 300.0
#: Environment of a local cluster, set before ``ray`` is imported (Ray reads both at import or at start):
#: no usage statistics sent; and Ray's switch that makes a node use the loopback address as its own IP (Ray's
#: default on macOS / Windows), so its GCS, raylet, object manager and workers listen on 127.0.0.1 only.
LOCAL_CLUSTER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK = "127.0.0.1"


class RayMissingError(InputError):
    """``--executor ray`` without the optional ``ray`` package."""


def import_ray(local_cluster: bool) -> ModuleType:
    """The ``ray`` module, or :class:`RayMissingError` saying how to install it.

    ``local_cluster``: this process will start a loopback-only local cluster, so :data:`LOCAL_CLUSTER_ENV` is set
    first (a process that joins an existing cluster must keep its real address).
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if local_cluster:
        os.environ.update(LOCAL_CLUSTER_ENV)
    try:
        import ray
    except ImportError:
        raise RayMissingError(f"--executor ray needs the optional package ray, which is not installed: "
                              f"{INSTALL_HINT}") from None
    return ray


def blas_threads_env() -> dict[str, str]:
    """This process's BLAS thread count as the environment that sets it (numpy's OpenBLAS reads it at import).

    Ray starts every worker with OMP_NUM_THREADS = its CPUs (1 for one-CPU actors), and OpenBLAS sums a product
    in another order with another thread count: the VLAD head and the patch projection (numpy) then differ from a
    single-process build in the last bit. Actors of a local cluster get the driver's count instead, so a map built
    on them equals the single-process map bit for bit (the head is a small share of the work).
    """
    count = (os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
             or str(len(os.sched_getaffinity(0))))
    return {"OPENBLAS_NUM_THREADS": count, "OMP_NUM_THREADS": count}


def _worker_env() -> dict[str, str]:
    """Environment of the actors: this process's vpr_ros first on PYTHONPATH, so that actors on this machine
    import the same code as the driver (a source checkout run with PYTHONPATH, or pytest's ``pythonpath``),
    not another copy installed into the environment."""
    import vpr_ros

    package_parent = str(Path(vpr_ros.__file__).resolve().parents[1])
    paths = [package_parent, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


#: The SIGTERM handlers ``ray.init`` replaced in this process (it installs one that exits through Ray, and
#: ``ray.shutdown`` leaves it); saved by :func:`connect`, given back by :func:`disconnect`.
_sigterm_handlers: list[Any] = []


def connect(ray: ModuleType, **init_args: Any) -> None:
    """``ray.init(**init_args)``, remembering this process's SIGTERM handler for :func:`disconnect`."""
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main_thread else None
    ray.init(**init_args)
    _sigterm_handlers.append(handler)


def disconnect(ray: ModuleType) -> None:
    """``ray.shutdown()`` (a local cluster this process started stops), then this process's SIGTERM handler as it
    was before :func:`connect`, so that a long-lived process (a test session) goes on as before."""
    ray.shutdown()
    handler = _sigterm_handlers.pop() if _sigterm_handlers else None
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def start_local_cluster(num_cpus: int | None = None, num_gpus: int | None = None) -> ModuleType:
    """Start a single-node Ray cluster on this machine, bound to 127.0.0.1, and connect this process to it.

    No dashboard, no usage statistics, workers importing this process's vpr_ros. ``num_cpus`` / ``num_gpus``:
    the node's resources (None: what Ray detects). Stop it with :func:`disconnect`. Raises RuntimeError when
    Ray was imported before :data:`LOCAL_CLUSTER_ENV` could be set and the node would listen on another address
    than the loopback.
    """
    ray = import_ray(local_cluster=True)
    # address="local": always a new cluster; without it ray.init joins one that RAY_ADDRESS names or that
    # `ray start` left on this machine.
    connect(ray, address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
            runtime_env={"env_vars": _worker_env()})
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:
        disconnect(ray)
        raise RuntimeError(f"the local Ray node would listen on {address}, not {LOOPBACK}: ray was imported before "
                           f"vpr_ros could set {LOCAL_CLUSTER_ENV} (set them before importing ray)")
    return ray


def executor_from_spec(spec: str, workers: int = 0) -> RayExecutor | None:
    """The executor ``build_map --executor SPEC`` names: None for ``local`` (this process), else a RayExecutor.

    ``ray``: a local cluster started for the run; ``ray://HOST:PORT``: a running cluster through its Ray Client
    server; ``ray:ADDRESS``: a running cluster that this machine is a node of (``ray:auto``, ``ray:HOST:PORT``
    of its GCS).
    """
    if spec == "local":
        if workers:
            raise InputError("--workers needs --executor ray (or ray://HOST:PORT, ray:ADDRESS)")
        return None
    if spec == "ray":
        return RayExecutor(None, workers)
    if spec.startswith("ray://"):
        return RayExecutor(spec, workers)
    if spec.startswith("ray:") and len(spec) > len("ray:"):
        return RayExecutor(spec[len("ray:"):], workers)
    raise InputError(f"--executor {spec!r}: expected local, ray, ray://HOST:PORT or ray:ADDRESS")


class ChunkWorker:
    """A Ray actor (``ray.remote(ChunkWorker)``): one encoder and the build's head, encoding whole chunks."""

    def __init__(self, encoder_config: EncoderConfig, head: VladHead | None, size: tuple[int, int],
                 extractors: Sequence[FrameExtractor]) -> None:
        self.encoder_config = encoder_config
        self.head = head
        self.size = size
        self.extractors = list(extractors)
        self.encoder: Encoder | None = None

    def start(self) -> dict[str, Any]:
        """Load the encoder (outside ``__init__``, so that a bad model reaches the driver as its own error)."""
        from vpr_ros.core.encoders import make_encoder

        self.encoder = make_encoder(self.encoder_config)
        return {"pid": os.getpid(), "host": socket.gethostname(), "sha256": self.encoder.sha256,
                "providers": list(self.encoder.providers)}

    def encode(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """The chunk's arrays (as :func:`encode_chunk` gives them) and the seconds spent encoding them."""
        assert self.encoder is not None, "start() first"
        t0 = time.perf_counter()
        outputs = encode_chunk(images.__getitem__, len(images), self.encoder, self.head, self.size, self.extractors)
        return outputs, time.perf_counter() - t0


@dataclass(eq=False)  # compared by identity: one record per actor
class _Actor:
    number: int
    handle: Any
    pid: int = 0
    host: str = ""
    calls: int = 0


@dataclass
class RayStats:
    """What the last :meth:`RayExecutor.encode_chunks` did (read by bench/bench_ray_build.py)."""

    workers: int = 0
    chunks: int = 0
    frames: int = 0
    lost: int = 0                 # chunks handed out again after their actor died
    cluster_start_s: float = 0.0  # starting / joining the cluster
    actor_start_s: float = 0.0    # starting the actors (encoders loaded)
    encode_s: float = 0.0         # first call sent .. last chunk received
    worker_encode_s: float = 0.0  # sum over chunks of the seconds actors spent in encode_chunk


class RayExecutor:
    """Encodes chunks on Ray actors (see the module docstring).

    Connects to the cluster when :meth:`encode_chunks` starts and disconnects when it ends (a local cluster it
    started stops then), unless this process was already connected to a cluster (a test's, a benchmark's, a
    notebook's): that one is used and left running.

    Args:
        address: None: a local cluster (:func:`start_local_cluster`); else the address of a running cluster
            (``ray://HOST:PORT``, ``auto``, ``HOST:PORT``).
        workers: actors (0: one per GPU when the cluster has GPUs, else one per ``encoder.threads`` CPUs).
    """

    def __init__(self, address: str | None = None, workers: int = 0) -> None:
        if workers < 0:
            raise InputError(f"--workers {workers}: expected 0 (automatic) or more")
        self.address = address
        self.workers = workers
        self.ray = import_ray(local_cluster=address is None)
        self._connected_here = False
        self.stats = RayStats()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect from the cluster if this executor connected (a local cluster it started stops)."""
        if self._connected_here and self.ray.is_initialized():
            disconnect(self.ray)
        self._connected_here = False

    def _connect(self) -> None:
        if self.ray.is_initialized():
            return
        t0 = time.perf_counter()
        if self.address is None:
            start_local_cluster()
            log.info("started a local Ray cluster on %s: %s", LOOPBACK, self.ray.cluster_resources())
        else:
            try:
                connect(self.ray, address=self.address, runtime_env={"env_vars": _worker_env()})
            except ConnectionError as exc:
                raise InputError(
                    f"could not join the Ray cluster at {self.address}: {exc} (is it running? A cluster with token "
                    "authentication, Ray's default, needs RAY_AUTH_MODE=token here and its token in RAY_AUTH_TOKEN "
                    "or ~/.ray/auth_token)") from None
            log.info("joined the Ray cluster at %s: %s", self.address, self.ray.cluster_resources())
        self._connected_here = True
        self.stats.cluster_start_s = time.perf_counter() - t0

    def _placement(self, config: EncoderConfig) -> tuple[int, dict[str, float]]:
        """(number of actors, resources of one actor); refuses more than a local cluster has."""
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus and config.device != "cpu":
            kind, have, per_worker = "GPUs", gpus, 1
            each = {"num_cpus": 1, "num_gpus": 1}
        else:
            kind, have, per_worker = "CPUs", int(resources.get("CPU", 1)), max(1, config.threads)
            each = {"num_cpus": per_worker, "num_gpus": 0}
            if config.threads == 0:
                log.info("encoder.threads=0: every Ray worker's ONNX Runtime uses all cores of its machine; for "
                         "throughput set encoder.threads to cores / workers (the map then equals a single-process "
                         "build with that setting)")
        count = self.workers or max(1, have // per_worker)
        if count * per_worker > have:
            message = (f"--workers {count} need {count * per_worker} {kind} (encoder.threads={config.threads}), the "
                       f"Ray cluster has {have}")
            if self.address is None:  # a local cluster does not grow: the workers would never start
                raise InputError(f"{message}: lower --workers or encoder.threads")
            log.warning("%s now; waiting up to %.0f s for the cluster to grow", message, START_TIMEOUT_S)
        return count, each

    def _start_actors(self, numbers: Sequence[int], cls: Any, args: tuple[Any, ...],
                      encoder: Encoder) -> list[_Actor]:
        actors = [_Actor(n, cls.remote(*args)) for n in numbers]
        try:
            identities = self.ray.get([a.handle.start.remote() for a in actors], timeout=START_TIMEOUT_S)
            for actor, identity in zip(actors, identities, strict=True):
                actor.pid, actor.host = int(identity["pid"]), str(identity["host"])
                if identity["sha256"] != encoder.sha256:
                    raise InputError(f"Ray worker on {actor.host} loads an encoder with sha256 "
                                     f"{identity['sha256'][:12]}..., this process {encoder.sha256[:12]}...: every "
                                     f"node needs the same model file at {self._encoder_config(encoder).model}")
                log.info("Ray worker %d: pid %d on %s, %s", actor.number, actor.pid, actor.host,
                         ", ".join(identity["providers"]))
        except BaseException as exc:
            for actor in actors:
                self.ray.kill(actor.handle)
            if isinstance(exc, self.ray.exceptions.GetTimeoutError):
                raise RuntimeError(f"{len(actors)} Ray worker(s) did not start within {START_TIMEOUT_S:.0f} s: the "
                                   f"cluster ({self.ray.cluster_resources()}) lacks the resources; lower --workers"
                                   ) from None
            if isinstance(exc, self.ray.exceptions.RayTaskError) and isinstance(exc.cause, InputError):
                raise exc.cause from None
            raise
        return actors

    @staticmethod
    def _encoder_config(encoder: Encoder) -> EncoderConfig:
        """The build's encoder settings with the model as an absolute path (actors do not share our cwd)."""
        model_path = getattr(encoder, "model_path", None)
        return encoder.config if model_path is None else dataclasses.replace(encoder.config, model=str(model_path))

    def encode_chunks(self, source: FrameSource, chunks: Sequence[Chunk], encoder: Encoder, head: VladHead | None,
                      size: tuple[int, int], extractors: Sequence[FrameExtractor]
                      ) -> Iterator[tuple[Chunk, dict[str, np.ndarray]]]:
        """Yield ``(chunk, arrays)`` as the actors finish them (see :class:`vpr_ros.core.map_builder.ChunkExecutor`)."""
        if not chunks:
            return
        self.stats = RayStats()
        self._connect()
        try:
            yield from self._encode_on_actors(source, chunks, encoder, head, size, extractors)
        finally:
            self.close()  # a cluster started for this build stops with it

    def _encode_on_actors(self, source: FrameSource, chunks: Sequence[Chunk], encoder: Encoder,
                          head: VladHead | None, size: tuple[int, int], extractors: Sequence[FrameExtractor]
                          ) -> Iterator[tuple[Chunk, dict[str, np.ndarray]]]:
        ray = self.ray
        count, resources = self._placement(encoder.config)
        count = min(count, len(chunks))
        # Local actors use the driver's BLAS threads (blas_threads_env); a remote cluster's machines keep Ray's.
        local_env = {"runtime_env": {"env_vars": blas_threads_env()}} if self.address is None else {}
        cls = ray.remote(ChunkWorker).options(**resources, max_restarts=0, max_task_retries=0, **local_env)
        args = (self._encoder_config(encoder), ray.put(head), size, ray.put(list(extractors)))
        t0 = time.perf_counter()
        actors = self._start_actors(range(count), cls, args, encoder)
        self.stats.workers, self.stats.actor_start_s = count, time.perf_counter() - t0
        replacements_left, next_number = MAX_ATTEMPTS * count, count
        queue: deque[Chunk] = deque(chunks)
        attempts: dict[int, int] = {}
        in_flight: dict[Any, tuple[_Actor, Chunk]] = {}
        t_start = time.perf_counter()
        try:
            while queue or in_flight:
                for actor in actors:
                    while queue and actor.calls < CALLS_PER_ACTOR:
                        chunk = queue.popleft()
                        attempts[chunk.index] = attempts.get(chunk.index, 0) + 1
                        images = [source.load_image(i) for i in range(chunk.start, chunk.stop)]
                        in_flight[actor.handle.encode.remote(images)] = (actor, chunk)
                        actor.calls += 1
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                actor, chunk = in_flight.pop(ref)
                actor.calls -= 1
                try:
                    outputs, seconds = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                    reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                    if attempts[chunk.index] >= MAX_ATTEMPTS:
                        raise RuntimeError(
                            f"chunk {chunk.index} (frames {chunk.start}-{chunk.stop - 1}) was lost with its Ray "
                            f"worker {MAX_ATTEMPTS} times ({reason}); giving up: the chunks already saved are "
                            "kept, the same command resumes from them") from exc
                    log.warning("Ray worker %d (pid %d on %s) died while encoding chunk %d (frames %d-%d): %s; the "
                                "chunk goes to another worker (attempt %d of %d)", actor.number, actor.pid,
                                actor.host, chunk.index, chunk.start, chunk.stop - 1, type(exc).__name__,
                                attempts[chunk.index] + 1, MAX_ATTEMPTS)
                    self.stats.lost += 1
                    queue.appendleft(chunk)
                    if actor in actors:
                        actors.remove(actor)
                        ray.kill(actor.handle)  # if it is only unreachable, it must not come back with old calls
                        if replacements_left > 0:
                            replacements_left, next_number = replacements_left - 1, next_number + 1
                            actors += self._start_actors([next_number - 1], cls, args, encoder)
                    if not actors:
                        raise RuntimeError("every Ray worker died; the chunks already saved are kept, the same "
                                           "command resumes from them") from exc
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise (exc.cause if isinstance(exc.cause, InputError) else exc) from None
                del ref  # the chunk's arrays leave the object store once saved
                self.stats.chunks += 1
                self.stats.frames += len(chunk)
                self.stats.worker_encode_s += seconds
                yield chunk, outputs
        finally:
            st = self.stats
            st.encode_s = time.perf_counter() - t_start
            log.info("Ray: %d chunks (%d frames) on %d workers in %.1f s, %.1f s of it encoding per worker on average "
                     "(cluster start %.1f s, workers start %.1f s, %d chunks handed out again)", st.chunks, st.frames,
                     st.workers, st.encode_s, st.worker_encode_s / max(1, st.workers), st.cluster_start_s,
                     st.actor_start_s, st.lost)
            for actor in actors:
                ray.kill(actor.handle)
