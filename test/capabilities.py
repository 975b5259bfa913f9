"""The only reasons a test may be skipped: machine capabilities that the requirements cannot install.

Everything in requirements/*.txt (torch, rclpy, onnx, colcon, the reference Patch-NetVLAD...) and everything
shipped in the repository (data/, the default model in ros/vpr_ros/models) is required: a test never skips because one
of them is missing or broken, it fails. A test that needs something a machine may lack by nature (a GPU, a system
ROS 2 install) says so with ``@pytest.mark.requires("<capability>")``; test/conftest.py skips it with the reason
below when the probe says the machine lacks it, prints every skip at the end of the run, and fails the run
(exit status 1) if any test was skipped for a reason that is not one of these.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SKIP_PREFIX = "missing capability "
PTRACE_SEIZE = 0x4206  # <sys/ptrace.h>: attach without stopping the tracee (what strace -f uses)


def can_trace_a_child() -> bool:
    """Whether this process may ptrace a child of its own, as ``strace -f`` does (probed without strace, so a
    machine that allows tracing but lacks strace fails the tracing tests instead of skipping them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    child = subprocess.Popen(["sleep", "30"])
    try:
        return libc.ptrace(PTRACE_SEIZE, child.pid, None, None) == 0
    finally:
        child.kill()  # a seized tracee still dies of SIGKILL; the wait reaps it (we are parent and tracer)
        child.wait()


@dataclass(frozen=True)
class Capability:
    """Something a machine may lack, why that is acceptable, and how to tell whether this machine has it."""

    name: str
    reason: str                 # why a machine may lack it, and what is then left unchecked
    probe: Callable[[], bool]   # True when this machine has it (called at most once per session)

    @property
    def skip_reason(self) -> str:
        return f"{SKIP_PREFIX}{self.name}: {self.reason}"


CAPABILITIES: dict[str, Capability] = {c.name: c for c in (
    # The device nodes, not torch.cuda.is_available(): a machine with an NVIDIA GPU whose torch cannot use it
    # must fail the GPU tests, not skip them (and probing costs no torch import).
    Capability("gpu", "no NVIDIA GPU device (/dev/nvidia0); the CUDA paths (training with AMP, NCCL; ONNX Runtime and "
               "FAISS on the GPU: make gpu-check) run only on a machine with one",
               lambda: any(Path("/dev").glob("nvidia[0-9]*"))),
    Capability("system_ros2", "no `ros2` command: it comes with a system ROS 2 install, not with the PyPI rclpy "
               "wheels of requirements/runtime.txt; the entry points are then run directly, as `ros2 run` would",
               lambda: shutil.which("ros2") is not None),
    # Containers with a seccomp profile that denies ptrace, Yama ptrace_scope 3, some sandboxes (gVisor): there
    # strace cannot trace the node, and the check that it opens no socket off the machine is left undone.
    Capability("ptrace", "this machine does not allow a process to ptrace its children (seccomp, Yama "
               "ptrace_scope 3 or a sandbox), so strace cannot trace the node; its sockets are left unchecked",
               can_trace_a_child),
)}


@functools.cache
def has(name: str) -> bool:
    """Whether this machine has capability ``name`` (a key of :data:`CAPABILITIES`)."""
    return CAPABILITIES[name].probe()


def skip_reason(name: str) -> str:
    """The reason a test needing capability ``name`` is skipped with; raises KeyError for an unknown name."""
    return CAPABILITIES[name].skip_reason


def allowed_capability(reason: str) -> str | None:
    """The capability whose allow-listed reason ``reason`` is exactly, else None (an unexpected skip)."""
    if not reason.startswith(SKIP_PREFIX):
        return None
    name = reason[len(SKIP_PREFIX):].split(":", 1)[0]
    capability = CAPABILITIES.get(name)
    return name if capability is not None and capability.skip_reason == reason else None
