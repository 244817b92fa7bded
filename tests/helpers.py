"""Shared test helpers: running podnet, compiling inline topologies, network namespaces.

Safety rules for every real-kernel test (see README "Testing"):
  * bridges, veths, addresses and routes only inside namespaces the test created;
  * every namespace name starts with this run's unique prefix and is removed by a
    finalizer, pass or fail (and by a session-wide sweep of the prefix);
  * /var/lib/cni is private per simulated node (`node_sh` bind-mounts a temp dir
    over it inside the mount namespace that `ip netns exec` creates);
  * we only ever kill processes we started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
PODNET = [sys.executable, "-m", "compiler"]
RUN_PREFIX = f"pnt{os.getpid() % 100000}{uuid.uuid4().hex[:4]}-"


def podnet(*args: str, cwd: Optional[Path] = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([*PODNET, *args], cwd=cwd or REPO, env=env, capture_output=True, text=True, check=check, **kw)


def write_topology(directory: Path, text: str, name: str = "topology.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def is_root() -> bool:
    return os.geteuid() == 0


def have(*commands: str) -> bool:
    return all(shutil.which(c) for c in commands)


def sh(cmd: Sequence[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, **kw)


class Namespaces:
    """Creates uniquely named network namespaces and removes all of them on cleanup."""

    def __init__(self) -> None:
        self.prefix = f"{RUN_PREFIX}{uuid.uuid4().hex[:4]}-"
        self.created: List[str] = []

    def add(self, suffix: str, lo_up: bool = True) -> str:
        """A new namespace; `lo_up=False` leaves loopback down, as a runtime's
        fresh pod sandbox has it (so a test can see who brings it up)."""
        name = f"{self.prefix}{suffix}"
        sh(["ip", "netns", "add", name])
        self.created.append(name)
        if lo_up:
            sh(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def cleanup(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()


def sweep_namespaces(prefix: str = RUN_PREFIX) -> None:
    """Removes every namespace this test run may have left behind."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def node_sh(ns: str, cni_dir: Path, script: str, env: Optional[dict] = None, input: Optional[str] = None, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `script` with /bin/sh inside namespace `ns`, with `cni_dir` mounted over
    /var/lib/cni (private to this call's mount namespace, as `ip netns exec` makes one)."""
    cni_dir.mkdir(parents=True, exist_ok=True)
    os.makedirs("/var/lib/cni", exist_ok=True)
    wrapper = 'mount --bind "$PODNET_TEST_CNI_DIR" /var/lib/cni && exec /bin/sh -c "$PODNET_TEST_SCRIPT"'
    full_env = dict(os.environ, **(env or {}), PODNET_TEST_CNI_DIR=str(cni_dir), PODNET_TEST_SCRIPT=script)
    return subprocess.run(["ip", "netns", "exec", ns, "/bin/sh", "-c", wrapper], env=full_env, input=input, capture_output=True, text=True, check=check, timeout=timeout)
