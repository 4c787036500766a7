"""``minicontainer runtime`` / ``minicontainer-runtime``: an OCI runtime command line with runc's interface.

Tools that take a runtime path (containerd's runtime option, conformance suites) call it
where they would call runc: the same verbs, flags, state JSON, error wording and exit
codes (1 for any failure; ``run`` exits with the container command's code). Errors are
one line, logged the way runc logs them (logrus text or JSON, to --log or stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

PROG = "minicontainer-runtime"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1 as runc does (argparse's own is 2)."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        log("error", message)
        sys.exit(1)


_log_file: str | None = None
_log_format = "text"


def log(level: str, message: str) -> None:
    """One log line as runc writes it (logrus): to --log if given (and the bare error to stderr), else stderr."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if _log_format == "json":
        line = json.dumps({"level": level, "msg": message, "time": now}, separators=(",", ":"))
    else:
        line = f'time="{now}" level={level} msg={json.dumps(message)}'
    if _log_file:
        with open(_log_file, "a") as f:
            f.write(line + "\n")
        if level == "error":
            print(message, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="An OCI runtime over a bundle, with runc's command line.")
    p.add_argument("--root", default=None, help="where container states live (default: $MINICONTAINER_RUN/runtime)")
    p.add_argument("--log", default=None, help="append errors and warnings to this file instead of stderr")
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true", help="accepted for runc compatibility (no debug output yet)")
    p.add_argument("--trace", action="store_true",
                   help="print every kernel step (mounts, cgroup writes, pivot_root …) to stderr at the end")
    p.add_argument("--systemd-cgroup", action="store_true", help="refused: only cgroupfs paths are supported")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("spec", help="write a default config.json (runc spec's, with terminal off)")
    s.add_argument("--bundle", "-b", default=".")
    s.add_argument("--rootless", action="store_true", help="refused: rootless containers are not supported")

    c = sub.add_parser("create", help="create a container from a bundle; its command waits for `start`")
    _bundle_flags(c)
    c.add_argument("id")

    st = sub.add_parser("start", help="start the command of a created container")
    st.add_argument("id")

    sa = sub.add_parser("state", help="print a container's state (the runtime spec's state JSON)")
    sa.add_argument("id")

    k = sub.add_parser("kill", help="send a signal (default SIGTERM) to a container's init")
    k.add_argument("--all", "-a", action="store_true", help="signal every process in the container's cgroup")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")

    pa = sub.add_parser("pause", help="freeze every process of a container (its cgroup's freezer)")
    pa.add_argument("id")
    re_ = sub.add_parser("resume", help="thaw a paused container")
    re_.add_argument("id")

    x = sub.add_parser("exec", help="run another process in a container (its namespaces, cgroup and profile)")
    x.add_argument("--cwd", default="", help="working directory in the container")
    x.add_argument("--env", "-e", action="append", default=[], metavar="K=V")
    x.add_argument("--user", "-u", default="", metavar="UID[:GID]")
    x.add_argument("--additional-gids", "-g", action="append", type=int, default=[], metavar="GID")
    x.add_argument("--cap", "-c", action="append", default=[], metavar="CAP", help="add a capability")
    x.add_argument("--no-new-privs", action="store_true")
    x.add_argument("--process", "-p", default="", help="a JSON file with the whole process (config.json's)")
    x.add_argument("--detach", "-d", action="store_true")
    x.add_argument("--pid-file", default=None)
    x.add_argument("--tty", "-t", action="store_true", help="refused: no terminal support yet")
    x.add_argument("--ignore-paused", action="store_true")
    x.add_argument("id")
    x.add_argument("command", nargs=argparse.REMAINDER)

    d = sub.add_parser("delete", help="delete a stopped or created container (--force: a running one too)")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")

    r = sub.add_parser("run", help="create and start a container, wait for it, delete it")
    _bundle_flags(r)
    r.add_argument("--detach", "-d", action="store_true", help="return once the command has started")
    r.add_argument("id")

    ls = sub.add_parser("list", help="list containers")
    ls.add_argument("--format", "-f", default="table", choices=["table", "json"])
    ls.add_argument("--quiet", "-q", action="store_true", help="only show ids")
    return p


def _bundle_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", "-b", default=".", help="the bundle directory (default: the current directory)")
    p.add_argument("--pid-file", default=None, help="write the container init's host pid to this file")
    p.add_argument("--console-socket", default=None, help="refused: process.terminal is not supported")
    p.add_argument("--no-pivot", action="store_true", help="refused: the runtime always uses pivot_root")
    p.add_argument("--no-new-keyring", action="store_true", help="accepted: no session keyring is made anyway")


def _table(containers) -> str:
    """runc list's table: Go's tabwriter with minimum width 12 and padding 3."""
    rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
    for c in containers:
        state = c.state()
        rows.append([state["id"], str(state["pid"]), state["status"], state["bundle"], state["created"], "root"])
    widths = [max(12, max(len(row[i]) for row in rows) + 3) for i in range(5)]
    return "".join("".join(cell.ljust(w) for cell, w in zip(row, widths)) + row[5] + "\n" for row in rows)


def run_verb(a: argparse.Namespace) -> int:
    from .errors import MinicontainerError
    from .runtime import bundle_runtime as rt

    root = os.path.abspath(a.root or rt.default_root())
    if a.systemd_cgroup:
        raise MinicontainerError("--systemd-cgroup is not supported: minicontainer's runtime manages cgroupfs "
                                 "directories itself; leave the flag out")
    verb = a.verb
    if verb in ("create", "run"):
        if a.console_socket:
            raise MinicontainerError("--console-socket is not supported: there is no terminal support yet "
                                     "(set process.terminal to false)")
        if a.no_pivot:
            raise MinicontainerError("--no-pivot is not supported: the runtime always pivots into the root")
    if verb == "spec":
        if a.rootless:
            raise MinicontainerError("--rootless is not supported: run as root")
        rt.write_spec(a.bundle)
    elif verb == "create":
        _failed(verb, rt.create, root, a.id, a.bundle, a.pid_file)
    elif verb == "start":
        rt.start(root, a.id)
    elif verb == "state":
        sys.stdout.write(json.dumps(rt.load(root, a.id).state(), indent=2))
    elif verb == "kill":
        rt.kill(root, a.id, a.signal, a.all)
    elif verb == "pause":
        rt.pause(root, a.id)
    elif verb == "resume":
        rt.resume(root, a.id)
    elif verb == "exec":
        from .runtime.bundle_exec import ExecFailure, exec_process

        if a.tty:
            raise ExecFailure("exec failed: --tty is not supported: there is no terminal support yet")
        try:
            return exec_process(root, a.id, a.command, env=a.env, cwd=a.cwd, user=a.user,
                                additional_gids=a.additional_gids, caps=a.cap, no_new_privs=a.no_new_privs,
                                process_file=a.process, detach=a.detach, pid_file=a.pid_file,
                                ignore_paused=a.ignore_paused)
        except MinicontainerError as exc:
            raise ExecFailure(f"exec failed: {exc}") from None
    elif verb == "delete":
        rt.delete(root, a.id, a.force)
    elif verb == "run":
        return _failed(verb, rt.run, root, a.id, a.bundle, a.pid_file, a.detach)
    elif verb == "list":
        containers = rt.list_containers(root)
        if a.quiet:
            sys.stdout.write("".join(c.record.id + "\n" for c in containers))
        elif a.format == "json":
            states = [dict(c.state(), owner="root") for c in containers]
            sys.stdout.write(json.dumps(states or None, separators=(",", ":")) + "\n")
        else:
            sys.stdout.write(_table(containers))
    return 0


def _failed(verb: str, action, *args):
    """create and run prefix their errors as runc's do ("runc create failed: …")."""
    from .errors import MinicontainerError
    from .runtime.bundle_runtime import RuntimeFailure

    try:
        return action(*args)
    except MinicontainerError as exc:
        raise RuntimeFailure(f"{PROG} {verb} failed: {exc}") from None


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    global _log_file, _log_format
    from .errors import MinicontainerError
    from .runtime import bundle_state

    argv = sys.argv[1:] if argv is None else argv
    parser = _parser(prog)
    a = parser.parse_args(argv)
    _log_file, _log_format = (os.path.abspath(a.log) if a.log else None), a.log_format
    bundle_state.warning_sink = lambda message: log("warning", message)
    if not a.verb:
        parser.print_help()
        return 1
    try:
        if not a.trace:
            return run_verb(a)
        from . import trace

        with trace.recording() as steps:
            try:
                return run_verb(a)
            finally:
                print(steps.text(), file=sys.stderr)
    except MinicontainerError as exc:
        sys.stdout.flush()
        log("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 255 if a.verb == "exec" else 1   # runc's codes
    except OSError as exc:   # a kernel refusal no step turned into a sentence: still one line
        sys.stdout.flush()
        log("error", f"{exc.strerror or exc}{': ' + exc.filename if exc.filename else ''}")
        return 1
    except KeyboardInterrupt:
        return 130


def console() -> None:
    """The ``minicontainer-runtime`` executable."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
