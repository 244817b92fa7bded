"""The Ansible artifacts: OUT/ansible/inventory.yml and OUT/ansible/playbook.yml.

Both are built as data (dicts and lists) and dumped with PyYAML by the "yaml"
renderer; nothing here is templated as text. The playbook's file list is derived
from the planned artifacts, so a new node-side file is shipped without editing
anything here:

  nodes/<node>/net-setup.sh      -> {{ cni_bin_dir }}/<plugin type>   (the plugin)
  nodes/<node>/*.py              -> {{ cni_bin_dir }}/                (helpers beside it)
  nodes/<node>/*.conflist|*.conf -> {{ cni_conf_dir }}/
  nodes/<node>/routes.sh         -> {{ podnet_dir }}/                 (notifies the routes handler)
  routes.table                   -> {{ podnet_dir }}/                 (notifies the routes handler)
  nodes/<node>/<anything else>   -> {{ podnet_dir }}/
  router/*                       -> {{ podnet_dir }}/ on the router   (routing: router only)

Every destination is prefixed by {{ podnet_root }} (default ""), so a test can
install each node into a fake root directory.
"""

from __future__ import annotations

import posixpath
from typing import Any, Dict, List, Sequence, Tuple

from compiler.model import Topology

INVENTORY = "ansible/inventory.yml"
PLAYBOOK = "ansible/playbook.yml"
NODES_GROUP = "podnet"
ROUTER_GROUP = "podnet_router"
ROUTER_HOST = "router"

# The user-facing variables and their defaults; README "Shipping with Ansible" lists them.
DEFAULTS = {
    "podnet_root": "",
    "cni_bin_dir": "/opt/cni/bin",  # the seed's layout: cni_bin_dir=/etc/cni/bin
    "cni_conf_dir": "/etc/cni/net.d",
    "podnet_dir": "/etc/podnet",
    "podnet_serial": "100%",
    "podnet_max_fail_percentage": 0,
    "podnet_become": True,
}
ROUTES_HANDLER = "Apply the pod routes"
ROUTES_RECORD_HANDLER = "Record the applied pod routes"
ROUTES_TOPIC = "podnet routes"  # what both handlers listen to, in that order
APPLIED = "routes.applied"  # in podnet_dir: the checksums of the routes.sh and table last applied
INSTALLED = "installed.json"  # in podnet_dir: every path the playbook installed, a JSON list
BANNER = "partials/banner.sh.j2"  # a '#' comment: generated, from which topology, how to regenerate

# Destination directories: key -> the user's variable. A play defines _podnet_KEY_dir
# as podnet_root + that variable (with its default), and tasks use it as _DIRS[key].
_DIR_VARS = {"bin": "cni_bin_dir", "conf": "cni_conf_dir", "etc": "podnet_dir"}
_DIRS = {key: f"{{{{ _podnet_{key}_dir }}}}" for key in _DIR_VARS}


def _default(var: str) -> str:
    value = DEFAULTS[var]
    if isinstance(value, str):
        return f'{{{{ {var} | default("{value}") }}}}'
    return f"{{{{ {var} | default({str(value).lower() if isinstance(value, bool) else value}) }}}}"


def _path_var(var: str) -> str:
    root = DEFAULTS["podnet_root"]
    return f'{{{{ podnet_root | default("{root}") }}}}{_default(var)}'


def artifacts(topo: Topology, planned: Sequence[Any]) -> List[Any]:
    """The inventory and playbook for `topo`, given every other planned artifact."""
    from compiler.plan import Artifact, source_name  # plan imports this module

    modes = {a.path: f"{a.mode:04o}" for a in planned}
    node_files = _node_files(topo, modes)
    router_files = {p: m for p, m in sorted(modes.items()) if p.startswith("router/")}
    table_mode = modes.get("routes.table", "0644")
    source = source_name(topo.source)
    return [
        Artifact(INVENTORY, 0o644, "yaml", BANNER, {"source": source, "document": inventory(topo, bool(router_files))}),
        Artifact(PLAYBOOK, 0o644, "yaml", BANNER, {"source": source, "document": playbook(topo, node_files, router_files, table_mode)}),
    ]


def _node_files(topo: Topology, modes: Dict[str, str]) -> Dict[str, str]:
    """name -> mode of the files every node directory holds (the same for every node)."""
    per_node: Dict[str, Dict[str, str]] = {n.name: {} for n in topo.nodes}
    for p, mode in modes.items():
        parts = p.split("/")
        if len(parts) == 3 and parts[0] == "nodes":
            per_node[parts[1]][parts[2]] = mode
    files = next(iter(per_node.values()))
    odd = [n for n, own in per_node.items() if own != files]
    if odd:  # a bug in plan: the playbook ships one list of files to every node
        raise AssertionError(f"node directories differ in their files ({odd[0]}); the playbook needs one list")
    return dict(sorted(files.items()))


def inventory(topo: Topology, with_router: bool) -> Dict[str, Any]:
    """Every node, reachable at its (first) underlay address, named by podnet_node."""
    hosts = {n.name: {"ansible_host": str(n.address), "podnet_node": n.name} for n in topo.nodes}
    groups: Dict[str, Any] = {NODES_GROUP: {"hosts": hosts}}
    if with_router and topo.network.router is not None:
        groups[ROUTER_GROUP] = {"hosts": {ROUTER_HOST: {"ansible_host": str(topo.network.router)}}}
    return {"all": {"children": groups}}


def playbook(topo: Topology, node_files: Dict[str, str], router_files: Dict[str, str], table_mode: str) -> List[Dict[str, Any]]:
    """One play for the nodes, and one for the router when there is a router/ directory.
    Both take name -> mode of the files to ship; routes.table goes beside each routes.sh."""
    src = "{{ playbook_dir }}/../nodes/{{ podnet_node }}"
    installs = [_install(topo, name, f"{src}/{name}", mode) for name, mode in node_files.items()]
    if "routes.sh" in node_files:
        installs.append(("etc", "routes.table", "{{ playbook_dir }}/../routes.table", table_mode))
    plays = [_play(topo, f"Install pod network {topo.network.name} on its nodes", NODES_GROUP, installs, node=True)]
    if router_files:
        router = [("etc", posixpath.basename(p), f"{{{{ playbook_dir }}}}/../{p}", mode) for p, mode in router_files.items()]
        if "router/routes.sh" in router_files:
            router.append(("etc", "routes.table", "{{ playbook_dir }}/../routes.table", table_mode))
        plays.append(_play(topo, f"Install pod network {topo.network.name} routes on the router", ROUTER_GROUP, router, node=False))
    return plays


def _install(topo: Topology, name: str, src: str, mode: str) -> Tuple[str, str, str, str]:
    """(directory key, destination name, source, mode) of one node file."""
    if name == "net-setup.sh":
        return ("bin", topo.network.plugin, src, mode)
    if name.endswith(".py"):
        return ("bin", name, src, mode)
    if name.endswith((".conflist", ".conf")):
        return ("conf", name, src, mode)
    return ("etc", name, src, mode)


def _play(topo: Topology, name: str, hosts: str, installs: Sequence[Tuple[str, str, str, str]], node: bool) -> Dict[str, Any]:
    routes = [i for i in installs if i[1] in ("routes.sh", "routes.table")]
    others = [i for i in installs if i not in routes]
    dirs = sorted({i[0] for i in installs})
    tasks: List[Dict[str, Any]] = []
    if node:
        tasks.append({
            "name": "Check that the host names its podnet node",
            "ansible.builtin.assert": {
                "that": ["podnet_node is defined", "podnet_node is string"],
                "fail_msg": "set podnet_node (the node's name in the topology) for this host; OUT/ansible/inventory.yml does",
                "quiet": True,
            },
        })
    tasks.append({
        "name": "Create the install directories",
        "ansible.builtin.file": {"path": "{{ item }}", "state": "directory", "mode": "0755"},
        "loop": [_DIRS[d] for d in dirs],
    })
    if others:
        tasks.append(_copy_task("Install the CNI plugin, its helpers and its config", others, notify=False))
    if routes:
        tasks.append(_copy_task("Install routes.sh and the route table", routes, notify=True))
        tasks.append(_applied_task())
    tasks += _cleanup_tasks()
    return {
        "name": name,
        "hosts": f'{{{{ podnet_hosts | default("{hosts}") }}}}' if node else hosts,
        "gather_facts": False,
        "become": _default("podnet_become"),
        "serial": _default("podnet_serial"),
        "max_fail_percentage": _default("podnet_max_fail_percentage"),
        "vars": {
            **{f"_podnet_{d}_dir": _path_var(_DIR_VARS[d]) for d in sorted(set(dirs) | {"etc"})},
            "_podnet_installed": sorted(f"{_DIRS[d]}/{dest}" for d, dest, _, _ in installs),
        },
        "tasks": tasks,
        "handlers": [
            {
                "name": ROUTES_HANDLER,
                # tests swap the command (e.g. `ip netns exec NS .../routes.sh up`) so that
                # they never touch the routes of the machine they run on
                "ansible.builtin.command": {"cmd": '{{ podnet_routes_up_command | default(_podnet_etc_dir ~ "/routes.sh up") }}'},
                "changed_when": True,
                "listen": ROUTES_TOPIC,
            },
            {
                # only after the routes were applied: a host whose `up` failed keeps the old
                # record, so the next run applies them again
                "name": ROUTES_RECORD_HANDLER,
                "ansible.builtin.copy": {"content": f"{{{{ {_ROUTES_DIGEST} }}}}", "dest": f"{_DIRS['etc']}/{APPLIED}", "mode": "0644"},
                "listen": ROUTES_TOPIC,
            },
        ] if routes else [],
    }


# The checksums of the routes.sh and routes.table just installed (copy's results).
_ROUTES_DIGEST = "(_podnet_routes.results | map(attribute='checksum', default='') | join(' '))"


def _applied_task() -> Dict[str, Any]:
    """The routes are applied by handlers, on hosts whose routes.sh or table changed. A
    run that ends before its handlers (another host failed, a batch stopped at
    podnet_max_fail_percentage) or whose `up` failed would leave them installed but not
    applied, and a later run would find nothing changed: so the handlers also run where
    the record of what was last applied (APPLIED) is not what is installed."""
    return {
        "name": "Find whether the installed pod routes were applied",
        "ansible.builtin.slurp": {"src": f"{_DIRS['etc']}/{APPLIED}"},
        "register": "_podnet_applied",
        "failed_when": False,  # none yet
        "changed_when": f"(_podnet_applied.content | default('') | b64decode) != {_ROUTES_DIGEST}",
        "notify": ROUTES_TOPIC,
    }


def _cleanup_tasks() -> List[Dict[str, Any]]:
    """Removes what an earlier run installed and this one does not (a config renamed with
    the network, a plugin renamed with `type`): a stale config would still be read by
    the runtime. Only paths listed in INSTALLED (written by this playbook) are removed,
    after the new files are in place."""
    record = f"{_DIRS['etc']}/{INSTALLED}"
    previous = '(_podnet_previous.content | default("W10=") | b64decode | from_json)'  # W10= is "[]"
    return [
        {
            "name": "Read the files podnet installed last time",
            "ansible.builtin.slurp": {"src": record},
            "register": "_podnet_previous",
            "failed_when": False,  # the first run has no record
        },
        {
            "name": "Remove the files podnet installed before and no longer ships",
            "ansible.builtin.file": {"path": "{{ item }}", "state": "absent"},
            "loop": f'{{{{ {previous} | difference(_podnet_installed) | select("match", "^/") | sort }}}}',  # absolute paths only
        },
        {
            "name": "Record the files podnet installed",
            "ansible.builtin.copy": {"content": "{{ _podnet_installed | to_json }}", "dest": record, "mode": "0644"},
        },
    ]


def _copy_task(name: str, installs: Sequence[Tuple[str, str, str, str]], notify: bool) -> Dict[str, Any]:
    task: Dict[str, Any] = {
        "name": name,
        "ansible.builtin.copy": {"src": "{{ item.src }}", "dest": "{{ item.dest }}", "mode": "{{ item.mode }}"},
        "loop": [{"src": src, "dest": f"{_DIRS[d]}/{dest}", "mode": mode} for d, dest, src, mode in installs],
        "loop_control": {"label": "{{ item.dest }}"},
    }
    if notify:
        task["notify"] = ROUTES_TOPIC
        task["register"] = "_podnet_routes"
    return task
