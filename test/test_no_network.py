"""Nothing vpr_ros does leaves the machine: every socket the node connects or sends to is loopback, Unix or netlink.

Guards issue 12: ONNX Runtime 1.31.1 resolved its telemetry host (``mobile.events.data.microsoft.com``) about
9 s after it was imported, and ``onnxruntime.disable_telemetry_events()`` did not stop it
(vpr_ros/core/ort.py). A child process builds a map of a few corridor images with the default ONNX model,
starts the real localize node (in-process, DDS on loopback), gets one answer over real topics, then keeps the
node spinning past the time the uploader would start, all under ``strace -f -e trace=network``. Every
``connect`` / ``sendto`` / ``sendmsg`` / ``sendmmsg`` destination in the trace must be AF_UNIX, AF_NETLINK,
127.0.0.0/8 or ::1; a DNS lookup would show as a datagram to the resolver (port 53). Where ptrace is not
allowed, the uploader's files on disk (device id, event cache) are still checked for.

What Fast DDS does with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (seen in these traces, rmw_fastrtps 9.3.3):
discovery goes by unicast to 127.0.0.1 on the domain's participant ports from a socket whose multicast
interface is loopback (TTL 1); nothing is sent to 239.255.0.1 and no multicast group is joined. It still binds
its receive sockets to 0.0.0.0 (listening, never sending, off loopback).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpr_ros.core.paths import PACKAGE_ROOT

REPO = Path(__file__).resolve().parents[1]
#: Seconds the node keeps running after its first answer (the telemetry lookup came ~9 s after the import).
QUIET_AFTER_ANSWER_S = 12.0
#: Variables that could silence ONNX Runtime's uploader from outside (its own switch, its unit-test switch, the
#: CI markers it reads); the child runs without them, so only the project's own setting is tested.
OUTSIDE_SWITCHES = ("ORT_DISABLE_TELEMETRY", "ORT_RUNNING_UNIT_TESTS", "CI", "TF_BUILD", "GITHUB_ACTIONS",
                    "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL", "CODEBUILD_BUILD_ID", "BUILDKITE",
                    "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER")

CHILD = r"""
import csv, sys, time
from pathlib import Path
from vpr_ros.core.image import load_rgb
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.io.images import folder_source
from vpr_ros.nodes.harness import LocalizeLaunch, run_localize
from vpr_ros.nodes.replay import rgb_to_image_msg

corridor, work, model, quiet = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
names = [f"{i:07d}" for i in range(0, 40, 5)]
(work / "ref").mkdir()
for name in names:
    (work / "ref" / f"{name}.jpg").symlink_to(corridor / "ref" / f"{name}.jpg")
with open(corridor / "ref_poses.csv") as f:
    rows = [r for r in csv.reader(line for line in f if not line.startswith("#"))]
with open(work / "poses.csv", "w", newline="") as f:
    csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if Path(r[0]).stem in names])
build_map(folder_source(work / "ref", work / "poses.csv"), work / "map", BuildMapConfig(), progress=False)
launch = LocalizeLaunch({"map_path": str(work / "map"), "localizer.encoder.model": model,
                         "diagnostics_period": 0.5}, namespace="/no_network")
with run_localize(launch, threads=2, ready_timeout=60) as localize:
    answer = localize.client.send_and_wait(rgb_to_image_msg(load_rgb(corridor / "query" / "0000010.jpg"), 1.0), 60)
    assert answer is not None, "the node did not answer"
    print("answered, top-1 reference", int(answer.ref_ids[0]), flush=True)
    time.sleep(quiet)
"""

SENDING_CALL = re.compile(r"^\d+\s+(connect|sendto|sendmsg|sendmmsg)\(")
FAMILY = re.compile(r"sa_family=(AF_\w+)")
INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
INET6 = re.compile(r'sa_family=AF_INET6, sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')
#: Families that never leave the machine (AF_UNSPEC: connect() with it only dissolves a datagram association).
LOCAL_FAMILIES = {"AF_UNIX", "AF_NETLINK", "AF_UNSPEC"}


@dataclass(frozen=True)
class Destination:
    family: str
    address: str  # "" for AF_UNIX / AF_NETLINK / AF_UNSPEC
    port: int
    line: str     # the strace line, as evidence

    @property
    def on_this_machine(self) -> bool:
        if self.family in LOCAL_FAMILIES:
            return True
        if self.family not in ("AF_INET", "AF_INET6") or not self.address:
            return False
        ip = ipaddress.ip_address(self.address)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def destinations(trace: str) -> list[Destination]:
    """Every destination address of a connect / sendto / sendmsg / sendmmsg in an ``strace -f`` trace.

    A send without an address goes to the socket's connected peer, which its ``connect`` already showed.
    """
    found = []
    for line in trace.splitlines():
        if not SENDING_CALL.match(line):
            continue
        inet = {m.start(): (int(m[1]), m[2]) for m in INET.finditer(line)}
        inet6 = {m.start(): (int(m[1]), m[2]) for m in INET6.finditer(line)}
        for m in FAMILY.finditer(line):
            port, address = inet.get(m.start()) or inet6.get(m.start()) or (0, "")
            found.append(Destination(m[1], address, port, line.strip()))
    return found


def test_destinations_are_parsed_from_strace_lines() -> None:
    """Guards the parser on lines copied from real traces (DNS lookup of the telemetry host, DDS on loopback)."""
    trace = "\n".join([
        '2088  connect(7, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '2090  sendto(8, "\\334\\222\\1\\0\\0\\1\\0\\0\\0\\0\\0\\0\\6mobile\\6events\\4data"..., 50, MSG_NOSIGNAL, '
        'NULL, 0) = 50',
        '3100  sendmsg(21, {msg_name={sa_family=AF_INET, sin_port=htons(7412), sin_addr=inet_addr("127.0.0.1")}, '
        'msg_namelen=16, msg_iov=[{iov_base="RTPS"..., iov_len=72}], msg_iovlen=1, msg_controllen=0, '
        'msg_flags=0}, 0) = 72',
        '3101  connect(5, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2603:1030::1", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>',
        '3102  connect(3, {sa_family=AF_UNIX, sun_path="/run/dbus"}, 110) = 0',
        '3103  recvfrom(7, "x", 1024, 0, {sa_family=AF_INET, sin_port=htons(53), '
        'sin_addr=inet_addr("10.255.255.53")}, [16]) = 1',
    ])
    found = destinations(trace)
    assert [(d.family, d.address, d.port) for d in found] == [
        ("AF_INET", "10.255.255.53", 53), ("AF_INET", "127.0.0.1", 7412), ("AF_INET6", "2603:1030::1", 443),
        ("AF_UNIX", "", 0)]
    assert [d.on_this_machine for d in found] == [False, True, False, True]


def test_encoder_leaves_no_telemetry_state_on_disk(default_model: Path, tmp_path: Path) -> None:
    """The uploader's first trace on disk: a device id and an event cache under $XDG_CACHE_HOME (checked without
    ptrace, so every machine checks that the switch is set before ONNX Runtime is imported)."""
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE_SWITCHES}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    code = ("import sys; from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder; "
            "OnnxEncoder(EncoderConfig(model=sys.argv[1], threads=1))")
    subprocess.run([sys.executable, "-c", code, str(default_model)], cwd=REPO, env=env, check=True, timeout=120)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == [], f"ONNX Runtime wrote telemetry state: {written}"


@pytest.mark.ros
@pytest.mark.requires("ptrace")
def test_node_opens_no_socket_off_the_machine(corridor: Path, default_model: Path, tmp_path: Path) -> None:
    strace = shutil.which("strace")
    assert strace is not None, ("strace is missing although this machine allows tracing: .ci/run installs it "
                                "(apt-get install strace); install it the same way")
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE_SWITCHES}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    trace_path = tmp_path / "network.strace"
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [strace, "-f", "-qq", "-s", "64", "-e", "trace=network", "-o", str(trace_path),
         sys.executable, "-c", CHILD, str(corridor), str(work), str(default_model), str(QUIET_AFTER_ANSWER_S)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and "answered" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    found = destinations(trace_path.read_text())
    # The trace must show the node's own DDS traffic on loopback, or it did not see the sockets at all.
    assert any(d.family in ("AF_INET", "AF_INET6") and d.on_this_machine for d in found), trace_path.read_text()
    outside = [d.line for d in found if not d.on_this_machine]
    assert not outside, "sockets off the machine:\n" + "\n".join(outside[:20])
