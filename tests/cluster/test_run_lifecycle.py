"""A real `emo-r3 train` run as a user starts it (a subprocess with its own local Ray), watched from
outside: every socket its processes listen on is on loopback; SIGTERM stops it with exit 143, a
resumable checkpoint and no process left behind; `--resume` finishes it with one metrics history."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "cluster.iterations=3",
    "cluster.prompts_per_iteration=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=16",
    "cluster.eval_every=0",
    "learner.micro_batch_size=4",
    "learner.num_ranks=2",
    "learner.num_cpus_per_rank=0.4",
    "rollout.num_cpus_per_worker=0.4",
    "reward.num_cpus_per_worker=0.2",
    "cluster.checkpoint_every=0",
    "cluster.tensorboard=false",
]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _process_tree(root: int) -> set[int]:
    """`root` and every process descended from it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def _socket_inodes(pids: set[int]) -> dict[str, int]:
    inodes = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    return inodes


def _listening() -> list[tuple[str, int, str]]:
    """(address, port, inode) of every listening TCP socket of the machine (/proc/net/tcp{,6})."""
    found = []
    for family, table in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            raw, port = fields[1].split(":")
            packed = bytes.fromhex(raw)
            if family == socket.AF_INET:
                packed = struct.pack("<I", int(raw, 16))
            else:  # four little-endian 32-bit words
                packed = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
            found.append((socket.inet_ntop(family, packed), int(port, 16), fields[9]))
    return found


def _listeners_of(pids: set[int]) -> set[tuple[str, int, str]]:
    """(address, port, process name) of what the processes `pids` listen on."""
    inodes = _socket_inodes(pids)
    out = set()
    for address, port, inode in _listening():
        if inode in inodes:
            try:
                name = Path(f"/proc/{inodes[inode]}/comm").read_text().strip()
            except OSError:
                name = "?"
            out.add((address, port, name))
    return out


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 is loopback too


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _env(tmp_path: Path) -> dict[str, str]:
    # a user's shell: none of the variables the test session sets to keep its own Ray on loopback
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["EMO_R3_CACHE_DIR"] = str(ROOT / ".cache")
    return env


def test_sigterm_stops_a_loopback_only_run_resumably_and_resume_finishes_it(tmp_path, random_init_tiny_model):
    run = tmp_path / "r"
    args = [
        sys.executable,
        "-m",
        "cluster.cli",
        "train",
        *SMALL,
        f"model.path={random_init_tiny_model}",
        f"cluster.output_dir={tmp_path}",
        "cluster.run_name=r",
    ]
    log = (tmp_path / "train.log").open("w")
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    listeners: set[tuple[str, int, str]] = set()
    pids: set[int] = set()
    deadline = time.monotonic() + 600
    while proc.poll() is None and not _metrics(run) and time.monotonic() < deadline:
        tree = _process_tree(proc.pid)
        pids |= tree
        listeners |= _listeners_of(tree)
        time.sleep(0.5)
    assert _metrics(run), (tmp_path / "train.log").read_text()[-3000:]
    listeners |= _listeners_of(_process_tree(proc.pid))
    proc.send_signal(signal.SIGTERM)  # during iteration 1
    returncode = proc.wait(timeout=300)
    log.close()
    output = (tmp_path / "train.log").read_text()

    # 1. nothing listened beyond loopback: GCS, raylet, workers, the learner's rendezvous store
    assert listeners, "no listening socket seen: the probe is broken"
    exposed = sorted(x for x in listeners if not _is_loopback(x[0]))
    assert not exposed, f"listening beyond loopback: {exposed}"
    # 2. a clean, resumable stop: exit 143, a checkpoint past iteration 0, no process left
    assert returncode == 143, output[-3000:]
    assert "Traceback" not in output and "SIGTERM" in output
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints and checkpoints[-1] in ("iter_000001", "iter_000002"), checkpoints
    # Ray's workers and the engines' processes exit within seconds of the driver (longer on a loaded host)
    grace = time.monotonic() + 30
    while (
        alive := {p: _cmdline(p) for p in sorted(pids) if Path(f"/proc/{p}").exists()}
    ) and time.monotonic() < grace:
        time.sleep(1)
    assert not alive, f"processes left behind: {alive}"
    # 3. --resume finishes the run: one history, iterations 0..2 once each, versions in order
    resumed = subprocess.run(
        [*args, "--resume"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    history = [(m["iteration"], m["policy_version"]) for m in _metrics(run)]
    assert history == [(0, 1), (1, 2), (2, 3)]
