"""IPAM test support: the ipam.sh partial rendered as a standalone, sourceable
script for one node of an inline topology, plus a runner for its functions."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from compiler.plan import plan
from compiler.render import _env, render
from compiler.topology import build
from compiler.load import load_file
from helpers import write_topology

SHELLS = ["dash", "busybox"]  # busybox runs as `busybox sh`
# Every shell, on the flock path and on the Python fallback path (no flock in PATH),
# and with the store always searched by grep (as large stores are).
MODES = ["dash", "busybox", "dash-noflock", "busybox-noflock", "dash-grep", "busybox-grep"]
_NOFLOCK_BIN: Optional[Path] = None


def noflock_path() -> str:
    """A PATH holding everything of the current PATH except flock: symlinks in a
    temp dir made once per test process."""
    global _NOFLOCK_BIN
    if _NOFLOCK_BIN is None:
        import tempfile

        bindir = Path(tempfile.mkdtemp(prefix="podnet-noflock-"))
        atexit.register(shutil.rmtree, str(bindir), True)
        if os.path.exists("/usr/bin/python3"):  # a node's python3, not a pyenv shim
            (bindir / "python3").symlink_to("/usr/bin/python3")
        for d in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                target = os.path.join(d, name)
                if name != "flock" and not (bindir / name).exists() and os.access(target, os.X_OK):
                    (bindir / name).symlink_to(target)
        _NOFLOCK_BIN = bindir
    return str(_NOFLOCK_BIN)


def topology_text(subnet: str = "10.244.1.0/24", node_prefix: int = 24, pod_cidr: str = "10.244.0.0/16", extra: str = "") -> str:
    return f"""
network:
  name: testnet
  podCIDR: {pod_cidr}
  nodePrefixLength: {node_prefix}
{extra}nodes:
  - name: node1
    address: 192.168.1.2
    podCIDR: {subnet}
"""


def render_ipam(tmp: Path, text: str, node: str = "node1") -> Path:
    """Writes tmp/ipam.sh: `set -eu`, then the IPAM partials as net-setup.sh includes them,
    and beside it the node's podnet-ipam.py. Returns the script's path. The
    rendered IPAM_STORE is kept; tests point it elsewhere."""
    topo = build(load_file(str(write_topology(tmp, text))))
    arts = {a.path: a for a in plan(topo)}
    view = arts[f"nodes/{node}/net-setup.sh"].data
    # both families' code, whatever the node's subnets: tests swap in other ranges
    view = dict(view, node=dict(view["node"], ipam_ipv6=True))
    env = _env(True)
    body = "".join(env.get_template(f"plugin/{name}.sh.j2").render(**view) for name in ("ipam", "ipam_query"))
    path = tmp / "ipam.sh"
    path.write_text("#!/bin/sh\nset -eu\n" + body)
    (tmp / "podnet-ipam.py").write_bytes(render(arts[f"nodes/{node}/podnet-ipam.py"]))
    return path


def shell_cmd(shell: str) -> List[str]:
    return ["busybox", "sh"] if shell.startswith("busybox") else [shell.split("-")[0]]


def mode_env(shell: str) -> Dict[str, str]:
    """The environment of a mode: without flock in PATH for the *-noflock ones,
    grep for every search of the store for the *-grep ones."""
    if shell.endswith("-noflock"):
        return {"PATH": noflock_path()}
    if shell.endswith("-grep"):
        return {"IPAM_TEST_SCAN_MAX": "0"}
    return {}


PROG = '. "$IPAM_TEST_SCRIPT"; IPAM_STORE="$IPAM_TEST_STORE"; IPAM_FALLBACK="$IPAM_TEST_FALLBACK"; IPAM_SCAN_MAX=${IPAM_TEST_SCAN_MAX:-$IPAM_SCAN_MAX}; '


def ipam_argv(shell: str, call: str) -> List[str]:
    """The command that sources the script (env from ipam_env) and runs `call`,
    exiting with its status."""
    return [*shell_cmd(shell), "-c", PROG + f"rc=0; {call} || rc=$?; exit $rc"]


def ipam_env(shell: str, script: Path, store: Path, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    return dict(os.environ, **mode_env(shell), **(env or {}), IPAM_TEST_SCRIPT=str(script), IPAM_TEST_STORE=str(store), IPAM_TEST_FALLBACK=str(script.parent / "podnet-ipam.py"))


def run_ipam(shell: str, script: Path, store: Path, call: str, input: Optional[str] = None, env: Optional[Dict[str, str]] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Sources `script` in `shell` (a MODES entry), points IPAM_STORE at `store`,
    runs `call` (e.g. 'ipam_add c1 eth0'); the exit status is the call's."""
    return subprocess.run(ipam_argv(shell, call), input=input, capture_output=True, text=True, env=ipam_env(shell, script, store, env), timeout=timeout)
