"""The command line: the one place that turns errors into messages and exit codes.

Exit codes: 0 success, 1 invalid input or failed check, 2 usage error.
A user's mistake prints `FILE:LINE:COL: error: MESSAGE` lines; anything else is a
bug in podnet and keeps its traceback.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import threading
from typing import List, Optional

from compiler import __version__
from compiler.diagnostics import InputError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CommandFailed(Exception):
    """A check that failed for a reason already explained; carries the message."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="podnet", description="Compile a cluster topology into per-node CNI plugins, routes and Ansible.")
    p.add_argument("--version", action="version", version=f"podnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    v = sub.add_parser("validate", help="schema and semantic checks; print every error")
    v.add_argument("topology", metavar="TOPOLOGY")

    c = sub.add_parser("compile", help="write every artifact into OUT")
    c.add_argument("topology", metavar="TOPOLOGY")
    c.add_argument("-o", "--output", default="out", metavar="OUT", help="output directory (default: out)")
    c.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each file that differs, with a diff")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    a = sub.add_parser("allocate", help="show (or pin) each node's pod subnet")
    a.add_argument("topology", metavar="TOPOLOGY")
    a.add_argument("--write", action="store_true", help="pin allocated subnets into TOPOLOGY, keeping its comments and layout")

    vf = sub.add_parser("verify", help="build the cluster in network namespaces on this machine and prove pod-to-pod reachability (root)")
    vf.add_argument("topology", metavar="TOPOLOGY")
    vf.add_argument("--pods-per-node", type=_positive, default=2, metavar="N", help="pods to create on every node (default: 2)")
    vf.add_argument("--max-pairs", type=_positive, default=5000, metavar="N", help="ping every pod pair up to N pairs, above that a sample covering every node pair both ways (default: 5000)")
    vf.add_argument("--keep", action="store_true", help="leave the namespaces, pods and files in place for inspection (prints how to remove them)")
    vf.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    d = sub.add_parser("diff", help="summarise the effect of changing OLD_TOPOLOGY into NEW_TOPOLOGY")
    d.add_argument("old", metavar="OLD_TOPOLOGY")
    d.add_argument("new", metavar="NEW_TOPOLOGY")
    d.add_argument("--allow-move", "--force", dest="allow_move", action="store_true",
                   help="accept moving a node's pod subnet (drain the node first)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)  # exits 2 on usage errors
    try:
        return _COMMANDS[args.command](args)
    except InputError as e:
        for d in e.diagnostics:
            print(d.format(e.filename), file=sys.stderr)
        return EXIT_FAIL
    except CommandFailed as e:
        print(f"podnet {args.command}: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print(f"podnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAIL


def cmd_validate(args) -> int:
    from compiler.topology import load_topology

    topo = load_topology(args.topology)
    print(f"{args.topology}: ok ({len(topo.nodes)} node{'s' if len(topo.nodes) != 1 else ''})")
    return EXIT_OK


def cmd_compile(args) -> int:
    # A compile makes hundreds of thousands of small objects that live until it
    # ends and next to no reference cycles: the cyclic collector would walk them
    # again and again for nothing (a quarter of a re-compile's time at 5,000 nodes).
    # Reference counting still frees what a compile drops.
    enabled = gc.isenabled()
    gc.disable()
    # SIGTERM ends a compile as ^C does: its temporary files are removed on the way out
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        return _compile(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if enabled:
            gc.enable()


def _interrupt(signum, frame):
    raise KeyboardInterrupt()


def _compile(args) -> int:
    from compiler.artifacts import compile_into
    from compiler.load import load_file
    from compiler.topology import build

    doc = load_file(args.topology)
    topo = build(doc)

    def show(change) -> None:  # --check: the diff goes to stdout as soon as it is found
        print(change.diff(), end="")

    try:
        pending = compile_into(args.output, topo, doc.text.encode(), check=args.check, on_change=show)
    except OSError as e:
        raise CommandFailed(f"cannot write {args.output!r}: {_os_error(e)}")
    if args.check:
        for change in pending:
            print(f"{args.output}/{change.path}: {change.kind}", file=sys.stderr)
        if pending:
            print(f"podnet compile --check: {len(pending)} file(s) differ; run `podnet compile {args.topology} -o {args.output}`", file=sys.stderr)
            return EXIT_FAIL
        return EXIT_OK
    if not args.quiet:
        print(f"{args.output}: {len(topo.nodes)} nodes, {len(pending)} file(s) written or removed")
    return EXIT_OK


def cmd_allocate(args) -> int:
    from compiler.topology import load_topology

    topo = load_topology(args.topology)
    if args.write:
        from compiler.pin import pin_subnets

        try:
            changed = pin_subnets(args.topology, topo)
        except OSError as e:
            raise CommandFailed(f"cannot write {args.topology!r}: {_os_error(e)}")
        print(f"{args.topology}: pinned {changed} node subnet{'s' if changed != 1 else ''}")
        return EXIT_OK
    width = max(len(n.name) for n in topo.nodes)
    for n in topo.nodes:
        how = "pinned" if all(n.pinned) else "allocated"
        print(f"{n.name:<{width}}  {' '.join(map(str, n.subnets))}  {how}")
    return EXIT_OK


def _os_error(e: OSError) -> str:
    """"No such file or directory (OUT/nodes)": what failed and where, without a traceback."""
    where = f" ({e.filename})" if e.filename else ""
    return f"{e.strerror or e}{where}"


def cmd_verify(args) -> int:
    from compiler import verify

    try:
        passed, _ = verify.run(args.topology, pods_per_node=args.pods_per_node, keep=args.keep, max_pairs=args.max_pairs, quiet=args.quiet)
    except verify.VerifyError as e:
        raise CommandFailed(str(e))
    return EXIT_OK if passed else EXIT_FAIL


def cmd_diff(args) -> int:
    from compiler.diff import compare
    from compiler.load import load_file
    from compiler.topology import build

    old = build(load_file(args.old))
    new_doc = load_file(args.new)
    report = compare(old, build(new_doc), new_doc)
    print(f"podnet diff {args.old} -> {args.new}:")
    for line in report.lines:
        print(f"  {line}")
    if report.moves and not args.allow_move:
        raise InputError(args.new, report.moves)
    return EXIT_OK


_COMMANDS = {
    "validate": cmd_validate,
    "compile": cmd_compile,
    "allocate": cmd_allocate,
    "verify": cmd_verify,
    "diff": cmd_diff,
}
