"""The `minicontainer` command line: docker-like verbs over the engine.

Imports are deferred into each verb so `minicontainer run` starts fast: Python's start-up
and imports count against the run latency target.
"""
from __future__ import annotations

import argparse
import os
import sys

__version__ = "0.1.0"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minicontainer", description="A teaching container engine.")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")

    # add_help=False: like docker, -h means --hostname here
    r = sub.add_parser("run", help="run a command in a new container (in the foreground)", add_help=False)
    r.add_argument("--help", action="help", help="show this help and exit")
    r.add_argument("--name", default="")
    r.add_argument("--hostname", "-h", default="")
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    r.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]")
    r.add_argument("-w", "--workdir", default="")
    r.add_argument("-m", "--memory", default=None, help="memory limit, e.g. 64m")
    r.add_argument("--cpus", default=None, help="CPU quota in cores, e.g. 0.5")
    r.add_argument("--pids-limit", type=int, default=None)
    r.add_argument("--read-only", action="store_true", help="mount the container's root read-only")
    r.add_argument("--rm", action="store_true", help="remove the container when it exits")
    show = r.add_mutually_exclusive_group()
    show.add_argument("--trace", action="store_true", help="print every kernel step afterwards (to stderr)")
    show.add_argument("--explain", action="store_true", help="print the steps a run would take, run nothing")
    r.add_argument("image")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("images", help="list images")
    i.add_argument("-q", "--quiet", action="store_true")
    i.set_defaults(func=cmd_images)
    v = sub.add_parser("version", help="show version information")
    v.set_defaults(func=cmd_version)
    return p


def cmd_run(a: argparse.Namespace) -> int:
    from .engine.run import RunOptions, plan, run_foreground

    kwargs = dict(name=a.name, hostname=a.hostname, env=a.env, volumes=a.volume, workdir=a.workdir,
                  memory=a.memory, cpus=a.cpus, pids_limit=a.pids_limit, readonly=a.read_only)
    if a.explain:
        print(plan(a.image, a.cmd, **kwargs).text())
        return 0
    opts = RunOptions.parse(a.image, a.cmd, remove=a.rm, **kwargs)
    state, trace, _ = run_foreground(opts)
    if a.trace:
        sys.stdout.flush()
        print(trace.text(), file=sys.stderr)
    if state.oom_killed:
        print(f"killed: out of memory (limit {_mib(opts.memory)})", file=sys.stderr)
    return state.exit_code if state.exit_code is not None else 125


def _mib(n: int | None) -> str:
    if n is None:
        return "none"
    return f"{n / 2**20:g} MiB"


def cmd_images(a: argparse.Namespace) -> int:
    from .engine.images import list_images

    rows = list_images()
    if a.quiet:
        for row in rows:
            print(row["id"][7:19])
        return 0
    print(f"{'REPOSITORY':<40} {'TAG':<12} {'IMAGE ID':<14} {'CREATED':<22} SIZE")
    for row in rows:
        print(f"{row['repository']:<40} {row['tag']:<12} {row['id'][7:19]:<14} {row['created']:<22} {row['size']}")
    return 0


def cmd_version(a: argparse.Namespace) -> int:
    import platform

    from .kernel.cgroups import detect_mode

    print(f"minicontainer {__version__}")
    print(f" Python:   {platform.python_version()}")
    print(f" Kernel:   {platform.release()}")
    print(f" cgroups:  {detect_mode()}")
    print(f" OS/Arch:  linux/{platform.machine()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import MinicontainerError

    args = _parser().parse_args(argv)
    if not getattr(args, "func", None):
        _parser().print_help()
        return 2
    try:
        return args.func(args)
    except MinicontainerError as exc:
        sys.stdout.flush()
        print(f"minicontainer: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 125)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
