"""The `minicontainer` command line: docker-like verbs over the engine.

Imports are deferred into each verb so `minicontainer run` starts fast: Python's start-up
and imports count against the run latency target.
"""
from __future__ import annotations

import argparse
import os
import sys

__version__ = "0.1.0"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where the help is, and exits 125 as docker's does."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: {message}: see '{self.prog} --help'\n")
        sys.exit(125)


def _parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; for `run`, only its own sub-parser is built (each costs start-up time)."""
    p = _Parser(prog="minicontainer", description="A teaching container engine.")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    _add_run(sub)
    if verb != "run":
        _add_other_verbs(sub)
    return p


def _add_run(sub) -> None:
    # add_help=False: like docker, -h means --hostname here
    r = sub.add_parser("run", help="run a command in a new container", add_help=False)
    r.add_argument("--help", action="help", help="show this help and exit")
    r.add_argument("-d", "--detach", action="store_true", help="run in the background and print the container id")
    _add_container_options(r)
    show = r.add_mutually_exclusive_group()
    show.add_argument("--trace", action="store_true", help="print every kernel step afterwards (to stderr)")
    show.add_argument("--explain", action="store_true", help="print the steps a run would take, run nothing")
    r.add_argument("image")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    r.set_defaults(func=cmd_run)


def _add_create(sub) -> None:
    c = sub.add_parser("create", help="create a container without starting it (start starts it)", add_help=False)
    c.add_argument("--help", action="help", help="show this help and exit")
    _add_container_options(c)
    c.add_argument("image")
    c.add_argument("cmd", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_create)


def _add_container_options(r) -> None:
    """The options run and create share, with docker's names."""
    r.add_argument("--name", default="")
    r.add_argument("--hostname", "-h", default="")
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    r.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]")
    r.add_argument("-w", "--workdir", default="")
    r.add_argument("-i", "--interactive", action="store_true", help="keep stdin open (it always is, in the foreground)")
    r.add_argument("-t", "--tty", action="store_true", help="give the command a pseudo-terminal (with -i: a shell you can use)")
    r.add_argument("-u", "--user", default="", metavar="USER[:GROUP]", help="run as this user (name or uid) of the image")
    r.add_argument("-m", "--memory", default=None, help="memory limit, e.g. 64m")
    r.add_argument("--cpus", default=None, help="CPU quota in cores, e.g. 0.5")
    r.add_argument("--pids-limit", default=None, metavar="N", help="the most processes the container may have")
    r.add_argument("--read-only", action="store_true", help="mount the container's root read-only")
    r.add_argument("--rm", action="store_true", help="remove the container when it exits")
    r.add_argument("--init", action="store_true",
                   help="run a tiny init (tini) as PID 1 that forwards signals and reaps zombies")
    r.add_argument("--privileged", action="store_true",
                   help="give the container every capability and unmask the kernel's files (unsafe)")
    r.add_argument("--cap-add", action="append", default=[], metavar="CAP", help="add a capability, e.g. NET_ADMIN, or ALL")
    r.add_argument("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability, e.g. CHOWN, or ALL")
    r.add_argument("--security-opt", action="append", default=[], metavar="OPT",
                   help="no-new-privileges[=true|false], seccomp=unconfined or seccomp=PROFILE.json (Docker's format)")


def _add_container_verbs(sub) -> None:
    p = sub.add_parser("ps", help="list containers (running ones; -a for all)")
    p.add_argument("-a", "--all", action="store_true", help="also created and exited containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only the ids")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_ps)
    st = sub.add_parser("stop", help="stop containers: SIGTERM, then SIGKILL after the grace period")
    st.add_argument("-t", "--time", type=float, default=10, help="seconds to wait before SIGKILL (default 10)")
    st.add_argument("containers", nargs="+")
    st.set_defaults(func=cmd_stop)
    k = sub.add_parser("kill", help="send a signal to containers' PID 1 (SIGKILL by default)")
    k.add_argument("-s", "--signal", default="KILL")
    k.add_argument("containers", nargs="+")
    k.set_defaults(func=cmd_kill)
    for verb, text in (("pause", "freeze every process of containers (cgroup freezer)"),
                       ("unpause", "thaw paused containers")):
        v = sub.add_parser(verb, help=text)
        v.add_argument("containers", nargs="+")
        v.set_defaults(func=cmd_pause if verb == "pause" else cmd_unpause)
    rm = sub.add_parser("rm", help="remove containers (their upper dir, logs and state)")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    rm.add_argument("containers", nargs="+")
    rm.set_defaults(func=cmd_rm)
    w = sub.add_parser("wait", help="block until containers exit, print their exit codes")
    w.add_argument("containers", nargs="+")
    w.set_defaults(func=cmd_wait)
    for verb, text in (("start", "start created or exited containers again (detached; their files are kept)"),
                       ("restart", "stop, then start containers")):
        v = sub.add_parser(verb, help=text)
        if verb == "restart":
            v.add_argument("-t", "--time", type=float, default=10, help="seconds to wait before SIGKILL")
        v.add_argument("containers", nargs="+")
        v.set_defaults(func=cmd_start if verb == "start" else cmd_restart)
    b = sub.add_parser("build", help="build an image from a Dockerfile (one step, and layer, per instruction)")
    b.add_argument("-t", "--tag", default=None, metavar="NAME[:TAG]")
    b.add_argument("-f", "--file", default=None, metavar="DOCKERFILE", help="default: CONTEXT/Dockerfile")
    b.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    b.add_argument("--no-cache", action="store_true", help="run every step again")
    b.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    b.add_argument("context")
    b.set_defaults(func=cmd_build)
    cpp = sub.add_parser("cp", help="copy files between a container and the host (CONTAINER:PATH on one side)")
    cpp.add_argument("src")
    cpp.add_argument("dest")
    cpp.set_defaults(func=cmd_cp)
    cm = sub.add_parser("commit", help="make a new image from a container's changes (its upper dir as a layer)")
    cm.add_argument("-m", "--message", default="")
    cm.add_argument("-p", "--pause", default="true", choices=["true", "false"],
                    help="pause a running container while its layer is written (default true)")
    cm.add_argument("container")
    cm.add_argument("repository", nargs="?")
    cm.set_defaults(func=cmd_commit)
    at = sub.add_parser("attach", help="attach to a running container's output (and stdin, if started with -i)")
    at.add_argument("--no-stdin", action="store_true", help="do not send our input")
    at.add_argument("container")
    at.set_defaults(func=cmd_attach)
    tp = sub.add_parser("top", help="the processes of a running container, as the host sees them")
    tp.add_argument("container")
    tp.set_defaults(func=cmd_top)
    sts = sub.add_parser("stats", help="live CPU, memory and pids figures of running containers (from their cgroups)")
    sts.add_argument("--no-stream", action="store_true", help="print once and exit (the only mode so far)")
    sts.add_argument("containers", nargs="*")
    sts.set_defaults(func=cmd_stats)
    rn = sub.add_parser("rename", help="rename a container")
    rn.add_argument("container")
    rn.add_argument("new_name")
    rn.set_defaults(func=cmd_rename)
    co = sub.add_parser("container", help="container management")
    cosub = co.add_subparsers(dest="subverb", metavar="COMMAND")
    cp_ = cosub.add_parser("prune", help="remove every stopped container")
    cp_.add_argument("-f", "--force", action="store_true", help="don't ask (minicontainer never asks)")
    cp_.set_defaults(func=cmd_container_prune)
    ex = sub.add_parser("exec", help="run a command in a running container (its namespaces, cgroup and profile)")
    ex.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    ex.add_argument("-w", "--workdir", default="")
    ex.add_argument("-u", "--user", default="", metavar="USER[:GROUP]")
    ex.add_argument("-i", "--interactive", action="store_true", help="keep stdin open (it always is)")
    ex.add_argument("-t", "--tty", action="store_true", help="give the command a pseudo-terminal")
    ex.add_argument("container")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    lg = sub.add_parser("logs", help="show a container's output (run -d keeps it)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new output until it exits")
    lg.add_argument("--tail", default="all", help="only the last N lines")
    lg.add_argument("-t", "--timestamps", action="store_true")
    lg.add_argument("container")
    lg.set_defaults(func=cmd_logs)


def _each(refs: list[str], action) -> int:
    """Apply ``action`` to each container, printing its name as docker does; 1 if any failed."""
    from .errors import MinicontainerError

    status = 0
    for ref in refs:
        try:
            result = action(ref)
            print(ref if result is None else result)
        except MinicontainerError as exc:
            print(f"minicontainer: {exc}", file=sys.stderr)
            status = 1
    return status


def cmd_ps(a: argparse.Namespace) -> int:
    import json

    from .engine.verbs import ps, ps_table

    rows = ps(all=a.all)
    if a.quiet:
        print("\n".join(r["ID"][:12] for r in rows) if rows else "", end="\n" if rows else "")
    elif a.format == "json":
        for row in rows:
            print(json.dumps(row))
    else:
        print(ps_table(rows))
    return 0


def cmd_stop(a: argparse.Namespace) -> int:
    from .engine.verbs import stop

    return _each(a.containers, lambda ref: stop(ref, a.time) and None)


def cmd_kill(a: argparse.Namespace) -> int:
    from .engine.verbs import kill, parse_signal

    parse_signal(a.signal)   # a bad signal is one error, not one per container
    return _each(a.containers, lambda ref: kill(ref, a.signal) and None)


def cmd_pause(a: argparse.Namespace) -> int:
    from .engine.verbs import pause

    return _each(a.containers, lambda ref: pause(ref) and None)


def cmd_unpause(a: argparse.Namespace) -> int:
    from .engine.verbs import unpause

    return _each(a.containers, lambda ref: unpause(ref) and None)


def cmd_rm(a: argparse.Namespace) -> int:
    from .engine.verbs import remove

    return _each(a.containers, lambda ref: remove(ref, force=a.force) and None)


def cmd_wait(a: argparse.Namespace) -> int:
    from .engine.verbs import wait

    return _each(a.containers, wait)


def cmd_start(a: argparse.Namespace) -> int:
    from .engine.verbs import start

    return _each(a.containers, lambda ref: start(ref) and None)


def cmd_restart(a: argparse.Namespace) -> int:
    from .engine.verbs import restart

    return _each(a.containers, lambda ref: restart(ref, a.time) and None)


def cmd_create(a: argparse.Namespace) -> int:
    from .engine.run import RunOptions, create_container

    opts = RunOptions.parse(a.image, a.cmd, remove=a.rm, **_run_kwargs(a))
    print(create_container(opts).id)
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    from .engine.build import build
    from .errors import InvalidArgument

    args = {}
    for item in a.build_arg:
        name, eq, value = item.partition("=")
        if not name:
            raise InvalidArgument(f"invalid --build-arg {item!r}: use NAME=value")
        args[name] = value if eq else os.environ.get(name, "")
    result = build(a.context, dockerfile=a.file, tag=a.tag, build_args=args, no_cache=a.no_cache,
                   output=(lambda text: None) if a.quiet else None)
    if a.quiet:
        print(result.image_id)
    return 0


def cmd_cp(a: argparse.Namespace) -> int:
    from .engine.container_files import copy

    copy(a.src, a.dest)
    return 0


def cmd_commit(a: argparse.Namespace) -> int:
    from .engine.verbs import commit

    print(commit(a.container, a.repository, message=a.message, pause_while=a.pause == "true"))
    return 0


def cmd_attach(a: argparse.Namespace) -> int:
    from .engine.terminal import attach

    return attach(a.container, send_stdin=not a.no_stdin)


def cmd_top(a: argparse.Namespace) -> int:
    from .engine.verbs import top

    rows = top(a.container)
    print(f"{'UID':<6} {'PID':<8} {'PPID':<8} {'S':<2} CMD")
    for r in rows:
        print(f"{r['UID']:<6} {r['PID']:<8} {r['PPID']:<8} {r['STATE']:<2} {r['CMD']}")
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    from .engine.verbs import ps, stats

    refs = a.containers or [r["ID"] for r in ps()]
    print(f"{'CONTAINER ID':<14} {'NAME':<20} {'CPU TIME':>10} {'MEM USAGE / LIMIT':>22} {'PIDS':>5}")
    for ref in refs:
        s = stats(ref)
        limit = f"{s['MemLimit'] / 2**20:.1f}MiB" if s["MemLimit"] else "no limit"
        print(f"{s['ID'][:12]:<14} {s['Name']:<20} {s['CPUSeconds']:>9.2f}s "
              f"{s['MemUsage'] / 2**20:>9.1f}MiB / {limit:<10} {s['PIDs']:>5}")
    return 0


def cmd_rename(a: argparse.Namespace) -> int:
    from .engine.verbs import rename

    rename(a.container, a.new_name)
    return 0


def cmd_container_prune(a: argparse.Namespace) -> int:
    from .engine.verbs import prune

    removed = prune()
    if removed:
        print("Deleted Containers:")
        print("\n".join(removed))
    print(f"Total: {len(removed)} containers removed")
    return 0


def cmd_exec(a: argparse.Namespace) -> int:
    from .engine.verbs import exec_
    from .errors import InvalidArgument, StateError

    if not a.cmd:
        raise InvalidArgument("exec needs a command: minicontainer exec CONTAINER COMMAND [ARG...]")
    if a.workdir and not a.workdir.startswith("/"):
        raise InvalidArgument(f"invalid working directory {a.workdir!r}: it must be absolute, e.g. -w /tmp")
    for item in a.env:
        if "=" not in item or item.startswith("="):
            raise InvalidArgument(f"invalid environment variable {item!r}: use -e NAME=value")
    master = slave = -1
    if a.tty:
        from .engine.terminal import open_pty
        master, slave = open_pty(0)
    try:
        proc = exec_(a.container, a.cmd, env=a.env, workdir=a.workdir, user=a.user,
                     stdio=(slave, slave, slave) if a.tty else (0, 1, 2),
                     close_in_child=(master,) if a.tty else (), tty=a.tty)
    except StateError as exc:   # docker exec: the daemon's refusal exits 1
        print(f"minicontainer: {exc}", file=sys.stderr)
        return 1
    finally:
        if slave >= 0:
            os.close(slave)
    try:
        if a.tty:
            from .engine.terminal import relay
            relay(master, until=proc.status_fd)
            os.close(master)
        code = proc.wait()
    finally:
        proc.reap()
    return code


def cmd_logs(a: argparse.Namespace) -> int:
    import time

    from .engine.containers import find_record
    from .engine.verbs import read_logs, reconcile

    if a.tail != "all" and not a.tail.isdigit():
        from .errors import InvalidArgument
        raise InvalidArgument(f"invalid --tail {a.tail!r}: give a number of lines, or all")
    tail = None if a.tail == "all" else int(a.tail)
    shown = 0
    while True:
        lines = read_logs(a.container, timestamps=a.timestamps)
        new = lines[shown:] if shown else (lines if tail is None else lines[-tail:] if tail else [])
        for stream, text in new:
            (sys.stdout if stream == "stdout" else sys.stderr).write(text)
        sys.stdout.flush()
        sys.stderr.flush()
        shown = len(lines)
        if not a.follow:
            return 0
        state = reconcile(find_record(a.container))
        if state is None or state.status not in ("running", "paused"):
            if len(read_logs(a.container)) == shown:
                return 0
        time.sleep(0.1)


LIMITS_EPILOG = """limits on untrusted images (environment variables; sizes like 4m, 20g):
  MINICONTAINER_MAX_MANIFEST_SIZE  largest manifest or index read (default 4m)
  MINICONTAINER_MAX_CONFIG_SIZE    largest image config read (default 4m)
  MINICONTAINER_MAX_IMAGE_SIZE     most one image's layers may unpack to (default 20g)
"""
REGISTRY_EPILOG = """time limits on a registry (environment variables):
  MINICONTAINER_REGISTRY_TIMEOUT        seconds one request may take, body included (default 3600)
  MINICONTAINER_REGISTRY_STALL_TIMEOUT  seconds in which a transfer must move 1 KiB (default 30)
  MINICONTAINER_REGISTRY_ATTEMPTS       tries of a GET or HEAD whose connection fails (default 5)
"""


def _add_other_verbs(sub) -> None:
    _add_create(sub)
    _add_container_verbs(sub)
    i = sub.add_parser("images", help="list images")
    i.add_argument("-q", "--quiet", action="store_true", help="only show image ids")
    i.add_argument("-a", "--all", action="store_true", help="also show untagged images")
    i.set_defaults(func=cmd_images)
    t = sub.add_parser("tag", help="give an image another name: tag SOURCE TARGET")
    t.add_argument("source")
    t.add_argument("target")
    t.set_defaults(func=cmd_tag)
    rmi = sub.add_parser("rmi", help="remove images (untag; deleted when no tag is left)")
    rmi.add_argument("-f", "--force", action="store_true", help="even if a container uses it")
    rmi.add_argument("images", nargs="+")
    rmi.set_defaults(func=cmd_rmi)
    ins = sub.add_parser("inspect", help="show a container's or an image's details as JSON (a container's "
                                         "includes its OCI bundle)")
    ins.add_argument("images", nargs="+")
    ins.set_defaults(func=cmd_inspect)
    h = sub.add_parser("history", help="show the layers and the commands that made them")
    h.add_argument("image")
    h.set_defaults(func=cmd_history)
    sv = sub.add_parser("save", help="write images to a tar archive (OCI layout or docker save format)")
    sv.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    sv.add_argument("--format", choices=["oci", "docker"], default="oci")
    sv.add_argument("images", nargs="+")
    sv.set_defaults(func=cmd_save)
    ld = sub.add_parser("load", help="load images from a tar archive (OCI layout or docker save format)",
                        epilog=LIMITS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ld.add_argument("-i", "--input", default="-", help="file to read (default: stdin)")
    ld.set_defaults(func=cmd_load)
    pl = sub.add_parser("pull", help="download an image from a registry",
                        epilog=LIMITS_EPILOG + "\n" + REGISTRY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--platform", default=None, help="os/arch[/variant], default: this host's")
    pl.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    pl.add_argument("image")
    pl.set_defaults(func=cmd_pull)
    ps = sub.add_parser("push", help="upload an image to the registry its name points at",
                        epilog=REGISTRY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ps.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    ps.add_argument("image")
    ps.set_defaults(func=cmd_push)
    li = sub.add_parser("login", help="check and save credentials for a registry (file readable by root only)")
    li.add_argument("-u", "--username", required=True)
    li.add_argument("-p", "--password", default=None, help="prefer --password-stdin: argv is visible in ps")
    li.add_argument("--password-stdin", action="store_true")
    li.add_argument("server", nargs="?", default="docker.io")
    li.set_defaults(func=cmd_login)
    lo = sub.add_parser("logout", help="forget the saved credentials for a registry")
    lo.add_argument("server", nargs="?", default="docker.io")
    lo.set_defaults(func=cmd_logout)
    img = sub.add_parser("image", help="image management")
    imgsub = img.add_subparsers(dest="image_verb", metavar="COMMAND", required=True)
    pr = imgsub.add_parser("prune", help="garbage-collect unreferenced blobs and unpacked layers")
    pr.set_defaults(func=cmd_prune)
    v = sub.add_parser("version", help="show version information")
    v.set_defaults(func=cmd_version)
    # listed for --help only: main() hands `runtime …` to runtime_cli before parsing
    sub.add_parser("runtime", help="an OCI runtime over a bundle, with runc's verbs (create, start, state, "
                                   "kill, delete, run, list, spec)", add_help=False)

    reg = sub.add_parser("registry", help="run a private registry (OCI distribution server)")
    regsub = reg.add_subparsers(dest="registry_verb", metavar="COMMAND", required=True)
    rs = regsub.add_parser("serve", help="serve a registry in the foreground (Ctrl-C stops)")
    rs.add_argument("--addr", default="127.0.0.1:5000", help="listen address (loopback only by default)")
    rs.add_argument("--root", default=None, help="storage directory (default: <engine root>/registry)")
    auth = rs.add_mutually_exclusive_group()
    auth.add_argument("--htpasswd", default=None, help="require Basic auth from this htpasswd file")
    auth.add_argument("--token-realm", action="store_true",
                      help="Docker Hub-style Bearer tokens from this server's /token (users from --users-file)")
    rs.add_argument("--users-file", default=None, help="htpasswd file the token server checks (with --token-realm)")
    rs.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --addr")
    rs.add_argument("-q", "--quiet", action="store_true", help="don't print one line per request")
    rs.add_argument("--upload-max-age", type=float, default=3600.0, metavar="SECONDS",
                    help="remove upload sessions untouched this long (checked while serving; default 3600)")
    rs.set_defaults(func=cmd_registry_serve)
    rh = regsub.add_parser("htpasswd", help="add or replace a user in an htpasswd file")
    rh.add_argument("file")
    rh.add_argument("user")
    rh.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    rh.set_defaults(func=cmd_registry_htpasswd)


def cmd_registry_serve(a: argparse.Namespace) -> int:
    from .engine.paths import engine_root
    from .registry.server import serve

    return serve(a.root or engine_root() / "registry", a.addr, htpasswd=a.htpasswd or a.users_file,
                 token_realm=a.token_realm, allow_remote=a.allow_remote, quiet=a.quiet,
                 upload_max_age=a.upload_max_age)


def cmd_registry_htpasswd(a: argparse.Namespace) -> int:
    import getpass

    from .registry.auth import add_htpasswd_user

    password = sys.stdin.readline().rstrip("\n") if a.password_stdin else getpass.getpass(f"password for {a.user}: ")
    add_htpasswd_user(a.file, a.user, password)
    print(f"{a.user} added to {a.file}")
    return 0


def _run_kwargs(a: argparse.Namespace) -> dict:
    return dict(name=a.name, hostname=a.hostname, env=a.env, volumes=a.volume, workdir=a.workdir,
                memory=a.memory, cpus=a.cpus, pids_limit=a.pids_limit, readonly=a.read_only, init=a.init,
                privileged=a.privileged, cap_add=a.cap_add, cap_drop=a.cap_drop, security_opt=a.security_opt,
                user=a.user, tty=a.tty, interactive=a.interactive)


def cmd_run(a: argparse.Namespace) -> int:
    from .engine.run import RunOptions, plan, plan_config, run_foreground

    kwargs = _run_kwargs(a)
    if a.explain:
        import json

        print(plan(a.image, a.cmd, **kwargs).text())
        print("\nconfig.json (the OCI runtime spec the runtime would be given; <id> is the container's id):")
        print(json.dumps(plan_config(a.image, a.cmd, **kwargs), indent=2))
        return 0
    opts = RunOptions.parse(a.image, a.cmd, remove=a.rm, **kwargs)
    if a.detach:
        from .engine.run import run_detached

        print(run_detached(opts).id)
        return 0
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

    rows = list_images(all=a.all)
    if a.quiet:
        for row in rows:
            print(row["id"][7:19])
        return 0
    print(f"{'REPOSITORY':<40} {'TAG':<12} {'IMAGE ID':<14} {'CREATED':<22} SIZE")
    for row in rows:
        print(f"{row['repository']:<40} {row['tag']:<12} {row['id'][7:19]:<14} {row['created']:<22} {row['size']}")
    return 0


def cmd_tag(a: argparse.Namespace) -> int:
    from .engine.images import tag_image

    tag_image(a.source, a.target)
    return 0


def cmd_rmi(a: argparse.Namespace) -> int:
    from .engine.images import remove_image
    from .errors import MinicontainerError

    status = 0
    for name in a.images:  # like docker: report each failure, carry on, exit 1 at the end
        try:
            for line in remove_image(name, force=a.force):
                print(line)
        except MinicontainerError as exc:
            print(f"minicontainer: {exc}", file=sys.stderr)
            status = 1
    return status


def cmd_inspect(a: argparse.Namespace) -> int:
    import json

    from .engine.containers import ContainerNotFound, inspect_container
    from .engine.images import inspect_image
    from .errors import ImageNotFound, MinicontainerError

    found = []
    for name in a.images:   # as docker inspect: a container of that name or id first, else an image
        try:
            found.append(inspect_container(name))
        except ContainerNotFound:
            try:
                found.append(inspect_image(name))
            except ImageNotFound:
                raise MinicontainerError(f"no such container or image: {name}: list images with "
                                         "`minicontainer images`; a container's id is printed by run") from None
    print(json.dumps(found, indent=4))
    return 0


def cmd_history(a: argparse.Namespace) -> int:
    from .engine.images import image_history

    print(f"{'IMAGE':<14} {'CREATED':<22} {'CREATED BY':<50} {'SIZE':>10}  COMMENT")
    for row in image_history(a.image):
        ident = row["id"][7:19] if row.get("id", "").startswith("sha256:") else row.get("id") or "<missing>"
        by = (row.get("created_by") or "")[:50]
        print(f"{ident:<14} {str(row.get('created', ''))[:19]:<22} {by:<50} {row.get('size', 0):>10}  "
              f"{row.get('comment', '')}")
    return 0


def cmd_save(a: argparse.Namespace) -> int:
    from .engine.images import save_images
    from .errors import InvalidArgument

    if a.output == "-" and sys.stdout.isatty():
        raise InvalidArgument("refusing to write an image archive to a terminal: use -o FILE or redirect stdout")
    save_images(a.images, a.output, format=a.format)
    return 0


def cmd_load(a: argparse.Namespace) -> int:
    from .engine.images import load_images

    for line in load_images(a.input):
        print(line)
    return 0


def _progress(quiet: bool):
    from .registry.progress import Progress, auto_progress

    return Progress() if quiet else auto_progress()


def cmd_pull(a: argparse.Namespace) -> int:
    from .engine.images import pull_image
    from .image.reference import parse_reference

    digest = pull_image(a.image, platform=a.platform, progress=_progress(a.quiet))
    print(f"Digest: {digest}")
    print(f"Status: downloaded {parse_reference(a.image).familiar}")
    return 0


def cmd_push(a: argparse.Namespace) -> int:
    from .engine.images import push_image

    digest = push_image(a.image, progress=_progress(a.quiet))
    if a.quiet:
        print(digest)
    return 0


def cmd_login(a: argparse.Namespace) -> int:
    import getpass

    from .registry.client import login

    password = a.password
    if a.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif password is None:
        password = getpass.getpass("Password: ")
    login(a.server, a.username, password)
    print("Login Succeeded")
    return 0


def cmd_logout(a: argparse.Namespace) -> int:
    from .registry.client import logout

    if logout(a.server):
        print(f"Removing login credentials for {a.server}")
    else:
        print(f"Not logged in to {a.server}")
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from .engine.images import collect_garbage

    freed = collect_garbage()
    print(f"removed {freed['blobs_removed']} blobs and {freed['layers_removed']} unpacked layers; "
          f"reclaimed {freed['bytes_freed'] / 1e6:.2f} MB")
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

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["runtime"]:   # runc's command line, the same code as the minicontainer-runtime executable
        from .runtime_cli import main as runtime_main

        return runtime_main(argv[1:], prog="minicontainer runtime")
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(verb)
    args = parser.parse_args(_attach_option_values(parser, argv))
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
    except BrokenPipeError:  # `minicontainer inspect busybox | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except PermissionError as exc:
        sys.stdout.flush()
        print(f"minicontainer: {_permission_message(args, exc)}", file=sys.stderr)
        return 125
    except OSError as exc:   # a file the user named, or the machine, refused: say which and why
        sys.stdout.flush()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"minicontainer: {_verb_name(args)}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 125
    except Exception as exc:   # a bug: still one line, with the way to see the traceback
        if os.environ.get("MINICONTAINER_DEBUG"):
            raise
        sys.stdout.flush()
        text = " ".join(str(exc).split())[:200]
        print(f"minicontainer: internal error in {_verb_name(args)}: {type(exc).__name__}: {text}: this is a bug; "
              "run it again with MINICONTAINER_DEBUG=1 for the traceback, and report it", file=sys.stderr)
        return 125


def _attach_option_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Join an option that takes a value to the next word: ``-m -5m`` becomes ``-m=-5m``.

    argparse takes ``-5m`` for an option and says "expected one argument"; docker's flag
    parser takes the next word as the value, so a bad value gets a message about the value.
    Only options before the verb's first positional word (the image, for run) are touched:
    what follows the image belongs to the command.
    """
    verbs = len(_subparser_chain(parser, argv)) - 1
    takes_value = _value_options(parser, argv)
    out, i = list(argv), 0
    while i < len(out) and out[i] != "--":
        word = out[i]
        if word in takes_value and i + 1 < len(out):
            if out[i + 1].startswith("-"):
                out[i:i + 2] = [f"{word}={out[i + 1]}"]
            else:
                i += 1          # the value itself, not a positional word
        elif not word.startswith("-"):
            if verbs == 0:
                break           # the first positional: the rest is the verb's (or the command's)
            verbs -= 1
        i += 1
    return out


def _subparser_chain(parser: argparse.ArgumentParser, argv: list[str]) -> list[argparse.ArgumentParser]:
    """The parser and the sub-parsers that the verbs in ``argv`` select (``image prune`` → two)."""
    chain = [parser]
    for word in argv:
        subs = [a for a in chain[-1]._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if not word.startswith("-") and word in subs[0].choices:
            chain.append(subs[0].choices[word])
    return chain


def _value_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The option strings (``-m``, ``--memory``) that take exactly one value, for the verbs in argv."""
    names: set[str] = set()
    for p in _subparser_chain(parser, argv):
        for action in p._actions:
            if action.option_strings and action.nargs is None and isinstance(
                    action, (argparse._StoreAction, argparse._AppendAction)):
                names.update(action.option_strings)
    return names


def _verb_name(args: argparse.Namespace) -> str:
    """The verb as typed: 'tag', 'image prune', 'registry serve'."""
    return " ".join(str(getattr(args, key)) for key in ("verb", "subverb", "image_verb", "registry_verb")
                    if getattr(args, key, None))


def _permission_message(args: argparse.Namespace, exc: PermissionError) -> str:
    """One line for EACCES/EPERM: as a non-root user it is nearly always the engine's root-only state."""
    verb = _verb_name(args)
    where = f" on {exc.filename}" if exc.filename else ""
    if os.geteuid() != 0:
        return (f"{verb} needs root: permission denied{where} (the engine's state belongs to root): "
                f"run it with sudo")
    return f"{verb}: permission denied{where}: check the file's owner and mode"


def console() -> None:
    """The `minicontainer` command: run main(), then leave without Python's shutdown.

    Tearing down every module and object at interpreter exit costs ~20 ms on our machines,
    a quarter of a `minicontainer run`; the kernel frees the memory anyway. So flush what
    was printed and _exit.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
