"""``run``: create a container from an image, start it in the foreground, wait, clean up.

The order is docker's: check every input first (so bad input changes nothing), resolve
the image and its layers, create the container's record and cgroup, start the process,
wait, record the exit, and remove what --rm asks to remove. A failure at any step rolls
back everything made before it.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import sys
import time
from dataclasses import dataclass, field

from .. import trace
from ..atomic import file_lock, make_private_dir
from ..errors import InvalidArgument, MinicontainerError, require_root
from ..image.reference import parse_reference
from ..image.store import BUILTIN_REF, Image, ImageStore, host_platform
from ..kernel.cgroups import Cgroup, CgroupStats, Limits, open_cgroup, parse_cpus, parse_memory
from ..kernel.devices import DEFAULT_RULES
from ..kernel.mounts import Volume
from ..kernel.seccomp import compile_filter, load_profile_file, profile_to_oci
from ..kernel.seccomp_profile import default_profile
from ..kernel.security import DEFAULT_CAPABILITIES, choose_capabilities
from ..runtime.process import FORWARDED_SIGNALS, ContainerProcess, ContainerStartError, read_to_eof, start_container
from ..runtime.oci import read_bundle, spec_to_config, write_bundle
from ..runtime.spec import ContainerSpec
from ..trace import Step, Trace
from .containers import ContainerRecord, ContainerState, create_record, remove_record
from .paths import RUN_ENTRIES, containers_dir, engine_root, run_dir



@dataclass
class RunOptions:
    """Everything `minicontainer run` accepts, already validated."""

    image: str
    args: list[str] = field(default_factory=list)
    name: str = ""
    hostname: str = ""
    env: list[str] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    workdir: str = ""
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    readonly: bool = False
    remove: bool = False
    init: bool = False        # --init: a tiny init as PID 1 that forwards signals and reaps zombies
    privileged: bool = False  # every capability, no masked or read-only paths
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    no_new_privileges: bool = True
    seccomp_profile: dict | None = field(default_factory=default_profile)   # Docker's format; None: unconfined
    user: str = ""            # -u: NAME, UID, NAME:GROUP or UID:GID, looked up in the image's /etc/passwd
    tty: bool = False         # -t: a pseudo-terminal for the command's stdio
    interactive: bool = False  # -i: keep stdin open (for a detached container: to `attach` to)

    @classmethod
    def parse(cls, image: str, args: list[str] | str | None = None, *, name: str = "", hostname: str = "",
              env: list[str] | dict[str, str] | None = None, volumes: list[str] | None = None, workdir: str = "",
              memory: str | int | None = None, cpus: str | float | None = None,
              pids_limit: str | int | None = None, readonly: bool = False, remove: bool = False,
              init: bool = False, privileged: bool = False, cap_add: list[str] | None = None,
              cap_drop: list[str] | None = None, security_opt: list[str] | None = None,
              user: str = "", tty: bool = False, interactive: bool = False) -> "RunOptions":
        """Validate user input before anything is created."""
        if isinstance(args, str):
            args = ["sh", "-c", args]
        if isinstance(env, dict):
            env = [f"{k}={v}" for k, v in env.items()]
        for item in env or []:
            if "=" not in item or item.startswith("="):
                raise MinicontainerError(f"invalid environment variable {item!r}: use -e NAME=value")
        pids = parse_pids_limit(pids_limit) if pids_limit is not None else None
        memory_bytes = parse_memory_limit(memory) if memory is not None else None
        if workdir and not workdir.startswith("/"):
            raise MinicontainerError(f"invalid working directory {workdir!r}: it must be absolute, e.g. -w /tmp")
        parse_reference(image)  # a malformed reference fails here, before anything exists
        if init:
            host_init_binary()   # a missing tini fails here too
        capabilities = choose_capabilities(cap_add or [], cap_drop or [], privileged)
        no_new_privileges, seccomp_profile = parse_security_opts(security_opt or [])
        return cls(image=image, args=list(args or []), name=name, hostname=hostname, env=list(env or []),
                   volumes=[parse_volume(v) for v in volumes or []], workdir=workdir,
                   memory=memory_bytes, cpus=parse_cpus(cpus) if cpus is not None else None, pids_limit=pids,
                   readonly=readonly, remove=remove, init=bool(init), privileged=bool(privileged),
                   capabilities=capabilities, no_new_privileges=no_new_privileges, user=user or "", tty=bool(tty),
                   interactive=bool(interactive),
                   # --privileged runs unconfined, unless a profile was asked for by name: never ignore one
                   seccomp_profile=seccomp_profile if not privileged or any(
                       o.startswith(("seccomp=", "seccomp:")) for o in security_opt or []) else None)

    @property
    def limits(self) -> Limits:
        return Limits(memory=self.memory, cpus=self.cpus, pids=self.pids_limit)


@dataclass
class RunResult:
    """What a finished container left: exit code, output, the trace of every step."""

    exit_code: int
    stdout: str
    stderr: str
    trace: Trace
    oom_killed: bool = False
    container_id: str = ""
    name: str = ""
    stats: CgroupStats | None = None    # the cgroup's last figures: memory peak, CPU time, OOM kills

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def _repr_html_(self) -> str:
        return (f"<p>exit code <b>{self.exit_code}</b>{' (OOM-killed)' if self.oom_killed else ''}</p>"
                f"<pre>{self.output}</pre>" + self.trace._repr_html_())


# --init, as Docker does it: the host's static tini, bind-mounted read-only into the
# container at the path Docker uses, runs as PID 1 and starts the command as its child.
HOST_INIT = "/usr/bin/tini-static"      # Debian's tini package
INIT_PATH = "/sbin/docker-init"


def parse_security_opts(options: list[str]) -> tuple[bool, dict | None]:
    """--security-opt values, as Docker spells them: (no_new_privs, the seccomp profile or None).

    ``no-new-privileges[=true|false]``, ``seccomp=unconfined`` and ``seccomp=PROFILE.json``
    (Docker's profile format). Anything else (apparmor, label) is refused by name rather
    than silently ignored.
    """
    no_new_privileges, profile = True, default_profile()
    for option in options:
        key, _, value = option.partition("=") if "=" in option else option.partition(":")
        if key == "no-new-privileges" and value in ("", "true", "false"):
            no_new_privileges = value != "false"
        elif key == "seccomp" and value == "unconfined":
            profile = None
        elif key == "seccomp" and value:
            profile = load_profile_file(value)
            profile_to_oci(profile, ())   # a malformed profile fails here, before anything exists
        else:
            raise MinicontainerError(f"unsupported --security-opt {option!r}: use no-new-privileges[=false], "
                                     "seccomp=unconfined or seccomp=PROFILE.json (apparmor and label are not supported)")
    return no_new_privileges, profile


# Docker's floor for -m: below this the container's runtime itself can't start.
MIN_MEMORY = 6 << 20
MAX_MEMORY = (1 << 63) - 1   # the cgroup files hold a signed 64-bit count (docker's int64 too)
# The kernel's PID_MAX_LIMIT on 64-bit: pids.max refuses anything larger (ERANGE past int64).
MAX_PIDS_LIMIT = 4 << 20
# The container gets its own proc, sysfs and /dev mounted after the volumes: a volume on or
# under them would be hidden without a word, so it is refused (runc refuses /proc too).
KERNEL_MOUNTS = ("/proc", "/sys", "/dev")


def parse_memory_limit(value: str | int) -> int:
    """-m as bytes; like docker, under 6 MiB is refused before anything is created."""
    size = parse_memory(value)
    if size > MAX_MEMORY:
        raise InvalidArgument(f"invalid memory limit {str(value)!r}: more than a cgroup can hold (2^63-1 bytes); "
                              "give e.g. -m 64m, or no -m for no limit")
    if size < MIN_MEMORY:
        raise InvalidArgument(f"invalid memory limit {str(value)!r}: the minimum is 6m (6 MiB), as in docker; "
                              "give e.g. -m 64m")
    return size


def parse_pids_limit(value: str | int) -> int:
    """--pids-limit as a number: 1 up to the kernel's PID_MAX_LIMIT, checked before the cgroup exists."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[+-]?\d+", text):
        raise InvalidArgument(f"invalid --pids-limit {str(value)!r}: give a whole number of processes, e.g. 64")
    number = int(text)
    if not 1 <= number <= MAX_PIDS_LIMIT:
        raise InvalidArgument(f"invalid --pids-limit {text}: give a number of processes from 1 to "
                              f"{MAX_PIDS_LIMIT} (the kernel's PID_MAX_LIMIT), e.g. 64")
    return number


def parse_volume(text: str) -> Volume:
    """-v SRC:DST[:ro]; a target on or under /proc, /sys or /dev is refused, as runc refuses /proc."""
    volume = Volume.parse(text)
    for kernel_mount in KERNEL_MOUNTS:
        if volume.target == kernel_mount or volume.target.startswith(kernel_mount + "/"):
            raise InvalidArgument(f"invalid volume {text!r}: {volume.target} is inside {kernel_mount}, which the "
                                  f"container mounts itself and would hide the volume under; mount it elsewhere, "
                                  "e.g. -v SRC:/data")
    return volume


def host_init_binary() -> str:
    """The static init binary --init mounts into the container; a clear error if it is missing."""
    if not os.access(HOST_INIT, os.X_OK):
        raise MinicontainerError(f"--init needs a static init binary at {HOST_INIT}: "
                                 "install Debian's tini package (apt-get install tini)")
    return HOST_INIT


def get_image(store: ImageStore, ref: str) -> Image:
    """Resolve ``ref`` (a name, or an image id as docker accepts it) in the store, building
    the built-in busybox image on first use."""
    if re.fullmatch(r"(sha256:)?[0-9a-f]{12,64}", ref):
        from .images import _resolve, find_image   # image archives and gc: only for this case

        return _resolve(store, find_image(store, ref), ref)
    name = str(parse_reference(ref))
    if name == BUILTIN_REF and not any(r == name for r, _ in store.list_refs()):
        from ..image.builtin import build_builtin_image  # tarfile and gzip: only on first use

        build_builtin_image(store)
    image = store.resolve(name)
    if image.platform != host_platform():
        raise MinicontainerError(f"image {ref} is for {image.platform}, but this host is {host_platform()}: "
                                 f"pull a {host_platform()} variant (--platform {host_platform()})")
    return image


def cgroup_name(container_id: str) -> str:
    """The container's cgroup name: its short id, after MINICONTAINER_CGROUP_TAG if that is set.

    Test runs set a tag, so that their leak check looks only at their own cgroups when
    several runs share a machine.
    """
    tag = os.environ.get("MINICONTAINER_CGROUP_TAG")
    return f"{tag}-{container_id[:12]}" if tag else container_id[:12]


def spec_for(record: ContainerRecord, image: Image, lowers: list[str], opts: RunOptions) -> ContainerSpec:
    """The runtime spec: the image config's Entrypoint/Cmd/Env/WorkingDir, overridden by the user's."""
    cfg = image.config.get("config", {})
    args = opts.args or (cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])
    if opts.args and cfg.get("Entrypoint"):
        args = cfg["Entrypoint"] + opts.args
    volumes = list(opts.volumes)
    if opts.init:
        # PID 1 gets no default signal handling from the kernel: a command that is PID 1
        # ignores SIGTERM unless it installs a handler. tini installs them, passes each
        # signal on to the command (its child), and reaps orphaned zombies.
        args = [INIT_PATH, "--", *args]
        volumes.append(Volume(host_init_binary(), INIT_PATH, readonly=True))
    env = _merge_env(cfg.get("Env") or [], opts.env)
    if not any(e.startswith("HOSTNAME=") for e in env):
        env.append(f"HOSTNAME={opts.hostname or record.id[:12]}")
    spec = ContainerSpec(id=record.id, args=args, rootfs=str(record.dir / "rootfs"), lowers=lowers,
                         upper=str(record.dir / "upper"), work=str(record.dir / "work"), env=env,
                         cwd=opts.workdir or cfg.get("WorkingDir") or "/",
                         hostname=opts.hostname or record.id[:12], volumes=volumes, readonly=opts.readonly,
                         capabilities=opts.capabilities, no_new_privileges=opts.no_new_privileges,
                         seccomp=None if opts.seccomp_profile is None
                         else profile_to_oci(opts.seccomp_profile, opts.capabilities))
    spec.user = resolve_user(opts.user or cfg.get("User") or "", lowers)
    if not any(e.startswith("HOME=") for e in spec.env):   # as Docker: the user's home, from the image's passwd
        spec.env.append(f"HOME={home_of(spec.user[0], lowers)}")
    spec.terminal = opts.tty
    if opts.privileged:   # as Docker's --privileged: nothing of the kernel is hidden or protected
        spec.masked_paths, spec.readonly_paths, spec.sys_readonly = (), (), False
    return spec


def read_image_file(lowers: list[str], rel: str) -> list[list[str]]:
    """The colon-separated lines of an /etc file as the image has it (its topmost layer that has it)."""
    for lower in lowers:   # top layer first
        path = os.path.join(lower, rel)
        if os.path.lexists(path):
            try:
                with open(path) as f:
                    return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
            except OSError:
                return []
    return []


def home_of(uid: int, lowers: list[str]) -> str:
    """The home directory /etc/passwd gives ``uid``; /root for root and / otherwise if it has none."""
    entry = next((e for e in read_image_file(lowers, "etc/passwd") if len(e) > 5 and e[2] == str(uid)), None)
    return entry[5] if entry is not None and entry[5] else ("/root" if uid == 0 else "/")


def resolve_user(user: str, lowers: list[str]) -> tuple[int, int, tuple[int, ...]]:
    """-u NAME[:GROUP] or UID[:GID] as numbers, from the image's /etc/passwd and /etc/group (as Docker does)."""
    if not user:
        return (0, 0, ())
    name, _, group = user.partition(":")
    passwd = read_image_file(lowers, "etc/passwd")
    entry = next((e for e in passwd if len(e) > 3 and (e[0] == name or (name.isdigit() and e[2] == name))), None)
    if entry is None and not name.isdigit():
        raise MinicontainerError(f"unable to find user {name}: no matching entries in the image's /etc/passwd: "
                                 "give a number (-u 1000) or add the user in the image")
    uid = int(name) if name.isdigit() else int(entry[2])
    gid = int(entry[3]) if entry is not None else 0
    groups = read_image_file(lowers, "etc/group")
    if group:
        match = next((g for g in groups if len(g) > 2 and (g[0] == group or (group.isdigit() and g[2] == group))), None)
        if match is None and not group.isdigit():
            raise MinicontainerError(f"unable to find group {group}: no matching entries in the image's /etc/group")
        gid = int(group) if group.isdigit() else int(match[2])
    member = entry[0] if entry is not None else None
    supplementary = tuple(sorted({int(g[2]) for g in groups if len(g) > 3 and member and member in g[3].split(",")}
                                 - {gid}))
    return (uid, gid, supplementary)


def _merge_env(image_env: list[str], user_env: list[str]) -> list[str]:
    merged = {e.split("=", 1)[0]: e for e in image_env}
    merged.update({e.split("=", 1)[0]: e for e in user_env})
    return list(merged.values())


def prepare(opts: RunOptions, image: Image | None = None) -> tuple[ContainerRecord, ContainerSpec, Cgroup]:
    """Image → layers → container record → cgroup with limits; rolled back on any failure.

    ``image``: run this image rather than the one ``opts.image`` names (a build's
    intermediate image, which has no name).
    """
    require_root()
    store = ImageStore(engine_root())
    image = image or get_image(store, opts.image)
    lowers = store.lower_dirs(image)
    if not lowers:
        raise MinicontainerError("the image has no layers, so nothing to run (FROM scratch): COPY files in first")
    record = create_record(name=opts.name, image=str(parse_reference(opts.image)), image_id=image.id,
                           args=opts.args, env=opts.env, cwd=opts.workdir, hostname=opts.hostname,
                           volumes=[f"{v.source}:{v.target}{':ro' if v.readonly else ''}" for v in opts.volumes],
                           readonly=opts.readonly, memory=opts.memory, cpus=opts.cpus, pids_limit=opts.pids_limit,
                           init=opts.init, privileged=opts.privileged, capabilities=list(opts.capabilities),
                           no_new_privileges=opts.no_new_privileges, auto_remove=opts.remove,
                           interactive=opts.interactive, tty=opts.tty,
                           durable=not opts.remove)
    cgroup = open_cgroup(cgroup_name(record.id))
    try:
        spec = spec_for(record, image, lowers, opts)
        set_up_cgroup(cgroup, opts)
        spec.cgroup_procs = cgroup.procs_files()
        # the OCI bundle: the runtime runs what config.json says, and nothing else
        write_bundle(record.dir / "bundle", oci_config(spec, opts), durable=not opts.remove)
        spec = read_bundle(record.dir / "bundle", record.id)
        if spec.seccomp is not None:   # compiled once per profile, not once per CLI call
            make_private_dir(run_dir(), ours=RUN_ENTRIES)
            compile_filter(spec.seccomp, cache_dir=run_dir() / "seccomp")
    except BaseException:
        cgroup.remove()
        remove_record(record)
        raise
    return record, spec, cgroup


def set_up_cgroup(cgroup: Cgroup, opts: RunOptions) -> None:
    """Create the container's cgroup, write its limits and its device allow-list."""
    cgroup.create()
    cgroup.set_limits(opts.limits)
    if not opts.privileged:   # --privileged, as in Docker, may use every device
        cgroup.allow_devices()


def oci_config(spec: ContainerSpec, opts: RunOptions) -> dict:
    """The container's OCI runtime config.json (see runtime/oci.py)."""
    return spec_to_config(spec, memory=opts.memory, cpus=opts.cpus, pids=opts.pids_limit,
                          devices=None if opts.privileged else DEFAULT_RULES)


def finish(record: ContainerRecord, cgroup: Cgroup, proc: ContainerProcess | None,
           remove: bool, *, wait_for_teardown: bool = False) -> tuple[ContainerState, CgroupStats | None]:
    """Record how the container ended, then remove its cgroup (and the container, with --rm).

    Returns the final state and the cgroup's last statistics (memory peak, CPU time, OOM kills).
    """
    state, stats = record.read_state(), None
    try:
        if proc is not None:
            state.exit_code = proc.wait()
            # like docker's OOMKilled: any process of the container was killed by the OOM killer
            stats = cgroup.stats()
            state.oom_killed = stats.oom_kills > 0

        state.status, state.finished_at, state.pid = "exited", time.time(), 0
        try:
            cgroup.kill_all()  # a daemon the command left behind dies with the container, as in docker
            cgroup.remove()
        finally:
            if remove:
                remove_record(record)
            else:
                with file_lock(containers_dir() / ".lock"):   # verbs.py's writes take it too
                    record.write_state(state)
    finally:
        if proc is not None:
            proc.reap(block=wait_for_teardown)
    return state, stats


def _capture(proc: ContainerProcess, out_r: int, err_r: int, stdin_w: int | None, data: bytes) -> tuple[bytes, bytes]:
    """Read the container's stdout and stderr to EOF while feeding its stdin."""
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    if stdin_w is not None:
        if data:
            sel.register(stdin_w, selectors.EVENT_WRITE)
        else:
            os.close(stdin_w)
    open_fds = len(sel.get_map())
    while open_fds:
        for key, _ in sel.select():
            fd = key.fd
            if fd == stdin_w:
                try:
                    data = data[os.write(fd, data[:65536]):]
                except BrokenPipeError:
                    data = b""
                if not data:
                    sel.unregister(fd)
                    os.close(fd)
                    open_fds -= 1
                continue
            chunk = os.read(fd, 65536)
            if chunk:
                chunks[fd].append(chunk)
            else:
                sel.unregister(fd)
                os.close(fd)
                open_fds -= 1
    sel.close()
    return b"".join(chunks[out_r]), b"".join(chunks[err_r])


def run(image: str = "busybox", cmd: list[str] | str | None = None, *, input: bytes | str = b"",
        detach: bool = False, **options) -> RunResult | str:
    """Run a container to completion and return its exit code, output and step trace.

    ``cmd`` is a list (exec form) or a string (run with ``sh -c``). Options are those of
    `minicontainer run`: name, hostname, env, volumes, workdir, memory ("64m"), cpus,
    pids_limit, readonly, remove (defaults to True here: nothing is kept). With
    ``detach=True`` (run -d) it returns the container's id as soon as its command runs.
    """
    if detach:
        options.setdefault("remove", False)
        return run_detached(RunOptions.parse(image, cmd, **options)).id
    options.setdefault("remove", True)
    opts = RunOptions.parse(image, cmd, **options)
    with trace.recording() as tr:
        record, spec, cgroup = prepare(opts)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        proc = None
        try:
            proc = _start(record, spec, (in_r, out_w, err_w), (out_r, err_r, in_w))
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
            if proc is None:
                for fd in (out_r, err_r, in_w):
                    os.close(fd)
                finish(record, cgroup, None, remove=True)
        stdout, stderr = _capture(proc, out_r, err_r, in_w, input.encode() if isinstance(input, str) else input)
        state, stats = finish(record, cgroup, proc, opts.remove)
    return RunResult(state.exit_code if state.exit_code is not None else -1, stdout.decode(errors="replace"),
                     stderr.decode(errors="replace"), tr, state.oom_killed, record.id, record.name, stats)


def _start(record: ContainerRecord, spec: ContainerSpec, stdio: tuple[int, int, int],
           close_in_child: tuple[int, ...] = ()) -> ContainerProcess:
    state = record.read_state()
    # Claim the start first: the command may run (and the CLI be killed) before "running" is
    # written below, and then ps must still find a watcher to ask (verbs.reconcile).
    state.status, state.pid, state.monitor_pid = "created", 0, os.getpid()
    record.write_state(state)
    proc = start_container(spec, stdio, close_in_child)
    state.status, state.pid, state.started_at = "running", proc.init_pid, time.time()
    state.exit_code, state.oom_killed, state.finished_at = None, False, 0.0   # a restart's fresh run
    state.monitor_pid = os.getpid()   # who watches it: the monitor, or the CLI or kernel of a foreground run
    record.write_state(state)
    return proc


def run_foreground(opts: RunOptions) -> tuple[ContainerState, Trace, ContainerRecord]:
    """The CLI's run: the container shares our stdio, and signals we get are forwarded to its PID 1."""
    started: list[ContainerProcess] = []
    early: list[int] = []

    def forward(sig: int, _frame) -> None:
        # installed before the container starts, so no signal is lost in between
        if started:
            started[0].signal(sig)
        else:
            early.append(sig)

    with trace.recording() as tr:
        record, spec, cgroup = prepare(opts)
        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
        try:
            proc = None
            master = slave = -1
            try:
                if opts.tty:
                    from .terminal import open_pty
                    master, slave = open_pty(0)
                proc = _start(record, spec, (slave, slave, slave) if opts.tty else (0, 1, 2),
                              close_in_child=(master,) if opts.tty else ())
            finally:
                if slave >= 0:
                    os.close(slave)
                if proc is None:
                    if master >= 0:
                        os.close(master)
                    finish(record, cgroup, None, remove=True)
            started.append(proc)
            for sig in early:
                proc.signal(sig)
            if opts.tty:
                from .terminal import relay
                try:
                    relay(master, until=proc.status_fd)
                finally:
                    os.close(master)
            state, _ = finish(record, cgroup, proc, opts.remove)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return state, tr, record


def run_detached(opts: RunOptions) -> ContainerRecord:
    """run -d: create the container, hand it to a monitor process, return once its command runs."""
    record, _, cgroup = prepare(opts)
    return launch_monitor(record, cgroup, remove=opts.remove, new=True)


def create(image: str = "busybox", cmd: list[str] | str | None = None, **options) -> str:
    """create: a container ready to start (options as for run); returns its id."""
    return create_container(RunOptions.parse(image, cmd, **options)).id


def create_container(opts: RunOptions) -> ContainerRecord:
    """create: the container's record, bundle and directories, but no process and no cgroup yet."""
    record, _, cgroup = prepare(opts)
    cgroup.remove()   # made again, with its limits, by start
    record.write_state(ContainerState(status="created"))
    return record


def options_of(record: ContainerRecord) -> RunOptions:
    """What set_up_cgroup needs again when an existing container starts: its limits and privilege."""
    return RunOptions(image=record.image, memory=record.memory, cpus=record.cpus, pids_limit=record.pids_limit,
                      privileged=record.privileged)


def launch_monitor(record: ContainerRecord, cgroup: Cgroup, *, remove: bool, new: bool) -> ContainerRecord:
    """Hand a prepared container to a monitor process; return once its command runs.

    The monitor (engine/monitor.py) starts the container from its bundle, logs its output,
    waits for it and records how it ended; this process can exit as soon as it hears
    "started". ``new``: the container was made for this start (run -d), so a failure to
    start removes it, as a foreground run does; an existing one is kept, exited.
    """
    import subprocess

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    flags = (["--rm"] if remove else []) + (["--new"] if new else [])
    try:
        with open(record.dir / "monitor.log", "ab") as errors:
            starter = subprocess.Popen(
                [sys.executable, "-m", "minicontainer.engine.monitor", record.id, str(ready_w), *flags],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, pass_fds=(ready_w,),
                start_new_session=True)   # a session of its own: no Ctrl-C or hangup from our terminal
        os.close(ready_w)
        ready_w = -1
        starter.wait()   # it forks the monitor and exits at once
        reply = read_to_eof(ready_r)
    except BaseException:
        finish(record, cgroup, None, remove=new)
        raise
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    answer = json.loads(reply) if reply else {"error": "the container's monitor died before starting it: see "
                                                      f"{record.dir / 'monitor.log'}", "exit_code": 125}
    if "error" in answer:
        if record.dir.exists() and ((state := record.read_state()).status == "running" or state.starting):
            finish(record, cgroup, None, remove=new)
        raise ContainerStartError(answer["error"], answer.get("exit_code", 125))
    return record


def _planned_spec(opts: RunOptions) -> ContainerSpec:
    """The spec a run of ``opts`` would use, with "<id>" where the container id will go."""
    store = ImageStore(engine_root())
    image_obj = get_image(store, opts.image)
    lowers = [str(store.layer_dir(d)) for d in image_obj.diff_ids][::-1]
    fake = ContainerRecord(id="<id>", name=opts.name or "<name>", image=opts.image, image_id=image_obj.id,
                           args=opts.args, env=opts.env)
    spec = spec_for(fake, image_obj, lowers, opts)
    spec.rootfs, spec.upper, spec.work = (f"{engine_root()}/containers/<id>/{d}" for d in ("rootfs", "upper", "work"))
    return spec


def plan_config(image: str = "busybox", cmd: list[str] | str | None = None, **options) -> dict:
    """The config.json a run would write (``--explain`` prints it), without running anything."""
    opts = RunOptions.parse(image, cmd, **options)
    spec = _planned_spec(opts)
    spec.cgroup_procs = open_cgroup("ID").procs_files()
    return oci_config(spec, opts)


def plan(image: str = "busybox", cmd: list[str] | str | None = None, **options) -> Trace:
    """List the steps a run would take, without taking them (``--explain``)."""
    from ..runtime.init import container_init, join_cgroup
    from ..kernel.namespaces import unshare_namespaces

    opts = RunOptions.parse(image, cmd, **options)
    spec = _planned_spec(opts)
    with trace.planning() as tr:
        cgroup = open_cgroup("ID")  # planning: nothing is created
        set_up_cgroup(cgroup, opts)
        spec.cgroup_procs = cgroup.procs_files()
        Step("fork", call="fork()", why="the engine never changes its own namespaces: a child does it").do(lambda: None)
        unshare_namespaces([k for k in spec.namespaces if k != "cgroup"])
        Step("fork", call="fork()", shell="unshare --fork …",
             why="after unshare(CLONE_NEWPID) only a new child enters the pid namespace, as its PID 1").do(lambda: None)
        join_cgroup(spec.cgroup_procs, pid=1)  # the setup child moves PID 1 while it mounts
        container_init(spec, wait_for_cgroup=lambda: None)
        # after PID 1 exits, finish() does these: the same calls, planned
        cgroup.kill_all()
        cgroup.remove()
    return tr
