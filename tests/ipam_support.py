"""IPAM test support: the ipam.sh partial rendered as a standalone, sourceable
script for one node of an inline topology, plus a runner for its functions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from compiler.plan import plan
from compiler.render import _env
from compiler.topology import build
from compiler.load import load_file
from helpers import REPO, write_topology

SHELLS = ["dash", "busybox"]  # busybox runs as `busybox sh`


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
    """Writes tmp/ipam.sh: `set -eu`, then the partial as net-setup.sh includes it.
    Returns its path. The rendered IPAM_STORE is kept; tests point it elsewhere."""
    topo = build(load_file(str(write_topology(tmp, text))))
    view = next(a.data for a in plan(topo) if a.path == f"nodes/{node}/net-setup.sh")
    body = _env(True).get_template("plugin/ipam.sh.j2").render(**view)
    path = tmp / "ipam.sh"
    path.write_text("#!/bin/sh\nset -eu\n" + body)
    return path


def fallback_script() -> Path:
    return REPO / "templates" / "plugin" / "podnet-ipam.py.j2"


def shell_cmd(shell: str) -> List[str]:
    return ["busybox", "sh"] if shell == "busybox" else [shell]


def run_ipam(shell: str, script: Path, store: Path, call: str, input: Optional[str] = None, env: Optional[Dict[str, str]] = None, fallback: Optional[Path] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Sources `script` in `shell`, points IPAM_STORE at `store`, runs `call`
    (e.g. 'ipam_add c1 eth0'); prints rc as the last stderr line is not needed:
    the process's exit status is the call's."""
    prog = f'. "$IPAM_TEST_SCRIPT"; IPAM_STORE="$IPAM_TEST_STORE"; '
    if fallback is not None:
        prog += 'IPAM_FALLBACK="$IPAM_TEST_FALLBACK"; '
    prog += f"rc=0; {call} || rc=$?; exit $rc"
    full_env = dict(os.environ, **(env or {}), IPAM_TEST_SCRIPT=str(script), IPAM_TEST_STORE=str(store), IPAM_TEST_FALLBACK=str(fallback or ""))
    return subprocess.run([*shell_cmd(shell), "-c", prog], input=input, capture_output=True, text=True, env=full_env, timeout=timeout)
