"""ADD fails at each of its steps in turn, driven from outside (no test hooks in the
plugin): the error object names the step, and nothing of the attempt is left
(no veth, no lease, no address, no route), while what existed before is untouched.
Then the same node still works."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers import have, sh
from plugin_node import BRIDGE, SHELLS, PluginNode

pytestmark = pytest.mark.skipif(not have("dash", "busybox", "iptables"), reason="needs dash, busybox and iptables")

FAKE_IPTABLES = '#!/bin/sh\necho "iptables: simulated failure" >&2\nexit 1\n'
READ_ONLY_SYSCTL = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "


def step_bridge(node, pod):
    """The bridge name is taken by an interface that is not a bridge."""
    sh(["ip", "-n", node.ns, "link", "add", BRIDGE, "type", "veth", "peer", "name", "pnbr0peer"])
    return {}, "", 999, f"{BRIDGE} exists but is not a bridge"


def step_veth(node, pod):
    """The pod already has an interface of that name."""
    sh(["ip", "-n", pod.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"])
    return {}, "", 999, "interface eth0 already exists in"


def step_lease(node, pod):
    """The pool is exhausted: every address of the /29 is leased to others."""
    store = node.store()
    store.mkdir(parents=True)
    for host in range(2, 7):
        (store / f"10.244.1.{host}").write_text(f"other{host}\r\neth0")
    return {}, "", 100, "no free address"


def step_pod_side(node, pod):
    """The pod already has a default route (via another interface), so ours cannot be added."""
    for cmd in (["link", "add", "other0", "type", "veth", "peer", "name", "other1"], ["addr", "add", "192.0.2.2/24", "dev", "other0"],
                ["link", "set", "other0", "up"], ["link", "set", "other1", "up"], ["route", "add", "default", "via", "192.0.2.1"]):
        sh(["ip", "-n", pod.ns, *cmd])
    return {}, "", 999, "cannot configure eth0 in"


def step_forwarding(node, pod):
    """Forwarding is off and /proc/sys is read-only for the plugin."""
    sh(["ip", "netns", "exec", node.ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
    return {}, READ_ONLY_SYSCTL, 999, "cannot enable forwarding"


def step_masquerade(node, pod):
    """iptables fails."""
    fake = node.tmp / "fakebin"
    fake.mkdir()
    (fake / "iptables").write_text(FAKE_IPTABLES)
    (fake / "iptables").chmod(0o755)
    import os

    return {"PATH": f"{fake}:{os.environ['PATH']}"}, "", 999, "cannot install the masquerade rule"


STEPS = [step_bridge, step_veth, step_lease, step_pod_side, step_forwarding, step_masquerade]


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__[5:] for s in STEPS])
@pytest.mark.parametrize("shell", SHELLS)
def test_add_fails_at_each_step_and_leaves_nothing(step, shell, netns, tmp_path):
    kw = {"node_prefix": 29, "subnet": "10.244.1.0/29"} if step is step_lease else {}
    node = PluginNode(netns, tmp_path, shell=shell, **kw)
    pod = node.new_pod()
    env, prefix, code, text = step(node, pod)
    before = node.snapshot(pod)
    leases_before = node.leases()
    veths_before = node.veths()

    failed = node.cni("ADD", pod, env=env, script=prefix + 'exec $PLUGIN_SHELL "$PLUGIN"')
    assert failed.rc == 1, failed
    (line,) = failed.stdout.splitlines()
    error = json.loads(line)
    assert error["code"] == code and text in error["msg"], failed

    after = node.snapshot(pod)
    # The bridge may have been created by this ADD (the node's, kept for all pods);
    # everything else is as before.
    assert [l for l in after["node links"] if l != BRIDGE] == [l for l in before["node links"] if l != BRIDGE], after
    assert node.veths() == veths_before
    assert after["pod links"] == before["pod links"] and after["pod addresses"] == before["pod addresses"]
    assert node.leases() == leases_before
    assert after["pod routes"] == before["pod routes"]

    # Nothing blocks a clean retry once the cause is gone (except the exhausted pool).
    if step is step_lease:
        return
    undo = {
        step_bridge: ["ip", "-n", node.ns, "link", "del", BRIDGE],
        step_veth: ["ip", "-n", pod.ns, "link", "del", "eth0"],
        step_pod_side: ["ip", "-n", pod.ns, "link", "del", "other0"],
    }
    if step in undo:
        sh(undo[step])
    retried = node.cni("ADD", pod)
    assert retried.rc == 0, retried
    assert node.cni("DEL", pod).rc == 0
    assert node.veths() == [] and node.leases() == {}


@pytest.mark.parametrize("shell", SHELLS)
def test_lease_taken_beside_a_failed_host_side_is_given_back(shell, netns, tmp_path):
    """ADD takes the lease while `ip` sets up the host side (issue 7). When the host
    side fails, the address taken meanwhile is given back (last_reserved_ip shows
    it was taken), while a lease the pair already held (an earlier ADD that
    crashed) stays, as when the lease step came after the host side."""
    node = PluginNode(netns, tmp_path, shell=shell)
    pod = node.new_pod()
    step_veth(node, pod)
    failed = node.cni("ADD", pod)
    assert failed.rc == 1 and "interface eth0 already exists in" in failed.json["msg"], failed
    assert node.leases() == {}
    assert (node.store() / "last_reserved_ip.0").read_text() == "10.244.1.2"
    (node.store() / "10.244.1.7").write_text(f"{pod.cid}\r\neth0")
    failed = node.cni("ADD", pod)
    assert failed.rc == 1 and "interface eth0 already exists in" in failed.json["msg"], failed
    assert node.leases() == {"10.244.1.7": f"{pod.cid} eth0"}


@pytest.mark.parametrize("shell", SHELLS)
def test_a_signal_while_the_links_and_lease_are_set_up_leaves_nothing(shell, netns, tmp_path):
    """SIGTERM to ADD while its pipeline runs (the lease side waits for the store's
    lock, held here; the host side has made the veth). The shell runs the trap once
    the pipeline is done, which by then has made the pair, taken the lease and
    configured the pod side: all of it is undone, as the error says."""
    node = PluginNode(netns, tmp_path, shell=shell, masquerade=False)
    pod = node.new_pod()
    script = r"""
        mkdir -p /var/lib/cni/networks/podnet
        exec 8>>/var/lib/cni/networks/podnet/lock 3<&0
        flock 8
        $PLUGIN_SHELL "$PLUGIN" <&3 >"$OUT" 8>&- &
        pid=$!
        tries=0
        until ip -o link show type veth | grep -q .; do
            tries=$((tries + 1))
            [ "$tries" -lt 200 ] || { echo "no veth after 10 s" >&2; exit 2; }
            sleep 0.05
        done
        kill -TERM "$pid"
        sleep 0.2
        exec 8>&-
        rc=0
        wait "$pid" || rc=$?
        echo "rc=$rc"
    """
    out = tmp_path / "result"
    done = node.cni("ADD", pod, env={"OUT": str(out)}, script=script)
    assert done.stdout.strip() == "rc=1", done
    error = json.loads(out.read_text())
    assert error["code"] == 11 and error["msg"] == "interrupted by a signal", error
    assert node.veths() == [] and node.leases() == {}
    assert [p.name for p in node.store().iterdir() if p.name.startswith(".podnet-pair.")] == []
    assert node.link_names(pod.ns) == ["lo"]
    assert node.cni("ADD", pod).rc == 0  # the retry the error asks for works


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("flock", [True, False], ids=["flock", "fallback"])
def test_a_sigkilled_add_leaves_nothing_behind_a_del(shell, flock, netns, tmp_path):
    """libcni enforces its ADD timeout with SIGKILL, to the plugin's shell alone: the
    processes of its pipeline live on, and finish after the runtime's DEL (here the
    host side's `ip` is slowed down by 1 s, as on a busy node). The lease side then
    finds nobody to report to and undoes what the pipeline made, as the DEL would
    have: no veth, no lease, no marker, nothing in the pod."""
    from plugin_node import path_without

    node = PluginNode(netns, tmp_path, shell=shell, masquerade=False)
    pod = node.new_pod()
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    real_ip = shutil.which("ip")
    (slow / "ip").write_text('#!/bin/sh\ncase " $* " in *" -batch "*) case " $* " in *" -n "*) ;; *) sleep 1 ;; esac ;; esac\n'
                             f'exec {real_ip} "$@"\n')
    (slow / "ip").chmod(0o755)
    path = f"{slow}:" + (os.environ["PATH"] if flock else path_without(tmp_path, "flock"))
    script = r"""
        exec 3<&0
        $PLUGIN_SHELL "$PLUGIN" <&3 >/dev/null 2>&1 &
        pid=$!
        sleep 0.5
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null
        CNI_COMMAND=DEL $PLUGIN_SHELL "$PLUGIN" </dev/null >"$OUT" 2>&1 <<EOF
$CONF
EOF
        echo "del rc=$?" >>"$OUT"
        sleep 2.5
    """
    out = tmp_path / "del"
    done = node.cni("ADD", pod, env={"PATH": path, "OUT": str(out), "CONF": json.dumps(node.conf)}, script=script)
    assert done.rc == 0, done
    assert out.read_text().endswith("del rc=0\n"), out.read_text()
    assert node.veths() == [] and node.leases() == {}, (node.veths(), node.leases())
    assert not [p.name for p in node.store().iterdir() if p.name.startswith(".podnet-pair.")]
    assert node.link_names(pod.ns) == ["lo"]
