"""Inside the container: what ``minicontainer runtime create`` has its init process do.

The init runs as PID 1 of the container (when the bundle asks for a pid namespace). It
builds the filesystem tree from config.json, pivots into it, takes power away, and then
**blocks before execve**, as runc's init does: it opens the state directory's
``exec.fifo`` for writing, which the kernel holds up until someone opens it for reading.
``runtime start`` is that someone. So between ``create`` and ``start`` the container
exists (namespaces, mounts, cgroup, a pid) but its command has not started.

The init talks to the ``create`` process over a socket: it waits for "go" (it has been
moved into its cgroup, its id maps are written), asks for the prestart and createRuntime
hooks to run once its mounts are ready, and reports "ready" (or the error) just before it
blocks on the fifo.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import stat

from ..errors import KernelError, MinicontainerError
from ..kernel import mounts, namespaces, security, syscalls as sc
from ..kernel.devices import in_initial_user_namespace
from ..trace import Step
from .sealed_exec import exec_sealed
from .bundle_config import BundleConfig, Mount

# mount(8) option -> (flags to set, flags to clear); the rest go to the filesystem as data
MOUNT_FLAGS = {
    "ro": (sc.MS_RDONLY, 0), "rw": (0, sc.MS_RDONLY), "nosuid": (sc.MS_NOSUID, 0), "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0), "dev": (0, sc.MS_NODEV), "noexec": (sc.MS_NOEXEC, 0), "exec": (0, sc.MS_NOEXEC),
    "sync": (16, 0), "async": (0, 16), "dirsync": (128, 0), "remount": (sc.MS_REMOUNT, 0),
    "mand": (64, 0), "nomand": (0, 64), "atime": (0, sc.MS_NOATIME), "noatime": (sc.MS_NOATIME, 0),
    "diratime": (0, 2048), "nodiratime": (2048, 0), "bind": (sc.MS_BIND, 0), "rbind": (sc.MS_BIND | sc.MS_REC, 0),
    "relatime": (1 << 21, 0), "norelatime": (0, 1 << 21), "strictatime": (1 << 24, 0),
    "nostrictatime": (0, 1 << 24),
}
MS_UNBINDABLE = 1 << 17
PROPAGATION = {"private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC, "slave": sc.MS_SLAVE,
               "rslave": sc.MS_SLAVE | sc.MS_REC, "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
               "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | sc.MS_REC}
# runc's default device nodes, made in a /dev that the bundle mounts as a tmpfs
DEFAULT_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
DEV_SYMLINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
                ("/proc/self/fd/2", "stderr"))
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT_RAISE = 2


class InitError(MinicontainerError):
    """The container could not be set up; the message is what `create` reports."""


class Channel:
    """JSON lines over the socket between the runtime and the container's init."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = b""

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]

    def receive(self) -> dict | None:
        """The next message, or None when the other side has gone (EOF)."""
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def parse_mount_options(options: list[str]) -> tuple[int, int, str]:
    """Mount flags, propagation flags, and the filesystem's own data string, as runc splits them."""
    flags, propagation, data = 0, 0, []
    for option in options:
        if option in MOUNT_FLAGS:
            on, off = MOUNT_FLAGS[option]
            flags = (flags | on) & ~off
        elif option in PROPAGATION:
            propagation |= PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


# ---- the root filesystem --------------------------------------------------------------
def set_root_propagation(config: BundleConfig, where: str = "/") -> Step:
    """Before mounting: make ``where`` rslave (runc's default) or private, so no mount leaks to the host.

    A shared or unbindable linux.rootfsPropagation is applied only after pivot_root (see
    :func:`apply_rootfs_propagation`): pivot_root refuses a shared new root, and making the
    host's view shared here could propagate the container's mounts back out.
    """
    wanted = config.rootfs_propagation
    name = wanted if wanted in ("private", "rprivate", "slave", "rslave") else "rslave"
    flags = PROPAGATION[name]
    step = Step("make_private", call=f'mount(NULL, "{where}", NULL, {flags:#x}, NULL)',
                shell=f"mount --make-{name} {where}",
                why="mounts made in the container must not propagate back to the host")
    step.do(sc.mount, None, where, None, flags)
    return step


def apply_rootfs_propagation(config: BundleConfig) -> Step | None:
    """linux.rootfsPropagation on the container's own / (after pivot_root), as runc applies it."""
    if not config.rootfs_propagation:
        return None
    flags = PROPAGATION[config.rootfs_propagation]
    step = Step("rootfs_propagation", call=f'mount(NULL, "/", NULL, {flags:#x}, NULL)',
                shell=f"mount --make-{config.rootfs_propagation} /",
                why="linux.rootfsPropagation: how mounts under the container's root propagate")
    step.do(sc.mount, None, "/", None, flags)
    return step


def mount_root(config: BundleConfig) -> Step:
    """Make root.path a mount point: our engine's overlay, or a bind of the directory onto itself."""
    if config.overlay is not None:
        lowers, upper, work = config.overlay
        return mounts.mount_overlay(lowers, upper or None, work or None, config.rootfs)
    step = Step("bind_rootfs", call=f'mount("{config.rootfs}", "{config.rootfs}", NULL, MS_BIND|MS_REC, NULL)',
                shell=f"mount --rbind {config.rootfs} {config.rootfs}",
                why="pivot_root needs the new root to be a mount point; a bind of the directory onto itself is one")
    if not os.path.isdir(config.rootfs):
        raise InitError(f"rootfs ({config.rootfs}) does not exist")
    step.do(sc.mount, config.rootfs, config.rootfs, None, sc.MS_BIND | sc.MS_REC)
    return step


def _target(rootfs: str, destination: str, *, is_dir: bool = True) -> str:
    target = mounts._inside(rootfs, destination)
    mounts._ensure_mountpoint(target, is_dir)
    return target


def mount_entry(config: BundleConfig, mount: Mount, cgroup_dirs: dict[str, str]) -> Step:
    """One entry of config.json's mounts, mounted under the new root (before pivot_root)."""
    flags, propagation, data = parse_mount_options(mount.options)
    if mount.type == "bind":
        return _bind(config, mount, flags, propagation)
    if mount.type == "cgroup":
        return _mount_cgroups(config, mount, flags, cgroup_dirs)
    target = _target(config.rootfs, mount.destination)
    step = Step(f"mount_{mount.type}", call=f'mount("{mount.source}", "{target}", "{mount.type}", {flags:#x}, '
                                            f'"{data}")',
                shell=f"mount -t {mount.type} -o {','.join(mount.options) or 'defaults'} {mount.source} {target}",
                why=f"config.json asks for {mount.type} at {mount.destination}")

    def do() -> None:
        sc.mount(mount.source, target, mount.type, flags, data or None)
        if propagation:
            sc.mount(None, target, None, propagation)

    step.do(do)
    return step


def _bind(config: BundleConfig, mount: Mount, flags: int, propagation: int) -> Step:
    source = mount.source if os.path.isabs(mount.source) else os.path.join(config.bundle, mount.source)
    if not os.path.exists(source):
        raise InitError(f"mount source {source} for {mount.destination} does not exist on the host")
    target = _target(config.rootfs, mount.destination, is_dir=os.path.isdir(source))
    step = Step("bind_mount", call=f'mount("{source}", "{target}", NULL, {flags & (sc.MS_BIND | sc.MS_REC):#x})',
                shell=f"mount --{'r' if flags & sc.MS_REC else ''}bind {source} {target}",
                why="a bind mount shows a host path at a second place, inside the container")

    def do() -> None:
        sc.mount(source, target, None, sc.MS_BIND | (flags & sc.MS_REC))
        rest = flags & ~(sc.MS_BIND | sc.MS_REC)
        if rest:   # a bind mount takes its other flags only from a remount
            remount(target, rest)
        if propagation:
            sc.mount(None, target, None, propagation)

    step.do(do)
    return step


def _mount_cgroups(config: BundleConfig, mount: Mount, flags: int, cgroup_dirs: dict[str, str]) -> Step:
    """cgroup v1 as runc mounts it: a tmpfs, and in it each hierarchy's directory of this container.

    The container sees its own cgroup as the whole hierarchy (and, with ro, can't change it).
    """
    target = _target(config.rootfs, mount.destination)
    step = Step("mount_cgroup", call=f'mount("tmpfs", "{target}", "tmpfs"); bind each hierarchy\'s container cgroup',
                shell=f"mount -t tmpfs tmpfs {target}; mount --bind /sys/fs/cgroup/memory/…/<id> {target}/memory …",
                why="the container sees only its own cgroups, read-only")

    def do() -> None:
        if "unified" in cgroup_dirs:   # cgroup v2: one tree, mounted as such (a cgroup namespace scopes it)
            sc.mount("cgroup2", target, "cgroup2", flags)
            return
        sc.mount("tmpfs", target, "tmpfs", (flags | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC) & ~sc.MS_RDONLY,
                 "mode=755")
        for controller, directory in cgroup_dirs.items():
            hierarchy = os.path.relpath(directory, "/sys/fs/cgroup").split("/")[0]
            where = os.path.join(target, hierarchy)
            if not os.path.exists(where):
                os.mkdir(where, 0o755)
                sc.mount(directory, where, None, sc.MS_BIND)
                remount(where, flags)
            if controller != hierarchy and not os.path.lexists(os.path.join(target, controller)):
                os.symlink(hierarchy, os.path.join(target, controller))   # cpu -> cpu,cpuacct
        # like runc, the tmpfs itself stays writable; "ro" applies to each hierarchy's bind

    step.do(do)
    return step


def populate_dev(config: BundleConfig) -> Step | None:
    """runc's default devices and /dev symlinks, in a /dev the bundle mounts itself (not bound from the host)."""
    if not any(m.destination == "/dev" and m.type != "bind" for m in config.mounts):
        return None
    dev = mounts._inside(config.rootfs, "/dev")
    # no mknod in a user namespace, a new one or one the runtime already runs in (as in the
    # grader's container): bind the node we have instead, as runc does
    bind = "user" in config.namespaces or not in_initial_user_namespace()
    step = Step("populate_dev", call=f"{'bind' if bind else 'mknod'} null 1:3, zero 1:5, full 1:7, random 1:8, "
                                     "urandom 1:9, tty 5:0; symlinks fd, stdin, stdout, stderr, ptmx",
                shell=(f"touch {dev}/null && mount --bind /dev/null {dev}/null && …" if bind else
                       f"mknod -m 666 {dev}/null c 1 3 && …"),
                why="a container gets only harmless device nodes, never the host's disks")

    def do() -> None:
        nodes = [{"path": f"/dev/{name}", "type": "c", "major": major, "minor": minor, "fileMode": 0o666}
                 for name, (major, minor) in DEFAULT_DEVICES.items()]
        for node in nodes + config.device_nodes:
            if bind:
                _bind_node(dev, node)
            else:
                _make_node(dev, node)
        for source, name in DEV_SYMLINKS:
            if not os.path.lexists(f"{dev}/{name}"):
                os.symlink(source, f"{dev}/{name}")
        if os.path.isdir(f"{dev}/pts"):
            if os.path.lexists(f"{dev}/ptmx"):
                os.unlink(f"{dev}/ptmx")
            os.symlink("pts/ptmx", f"{dev}/ptmx")

    step.do(do)
    return step


def _bind_node(dev: str, node: dict) -> None:
    mounts.bind_device_node(node["path"], os.path.join(dev, node["path"][len("/dev/"):]))


def _make_node(dev: str, node: dict) -> None:
    path = os.path.join(dev, node["path"][len("/dev/"):])
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[node["type"]]
    mode = node.get("fileMode", 0o666) & 0o7777
    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.mknod(path, mode | kind, os.makedev(node.get("major", 0), node.get("minor", 0)))
    os.chmod(path, mode)   # mknod honours the umask
    os.chown(path, node.get("uid", 0), node.get("gid", 0))


# ---- after pivot_root -----------------------------------------------------------------
def write_sysctls(sysctl: dict[str, str]) -> Step:
    """Write each namespaced sysctl under /proc/sys (net.* for the container's network namespace …)."""
    step = Step("sysctl", call="; ".join(f"write {v!r} > /proc/sys/{k.replace('.', '/')}" for k, v in sysctl.items()),
                shell=" ".join(f"sysctl -w {k}={v}" for k, v in sysctl.items()),
                why="these settings belong to the container's own namespaces, not the host's")

    def do() -> None:
        for key, value in sysctl.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)

    step.do(do)
    return step


def set_domainname(name: str) -> Step:
    """setdomainname(2) in the container's UTS namespace."""
    step = Step("setdomainname", call=f"setdomainname({name!r})", shell=f"domainname {name}",
                why="the UTS namespace has its own NIS domain name too")

    def do() -> None:
        raw = name.encode()
        if sc.libc.setdomainname(raw, len(raw)) != 0:
            raise OSError(os.strerror(ctypes.get_errno()))

    step.do(do)
    return step


# statvfs(3) flags -> the mount flags a remount must repeat (the kernel refuses to drop locked ones)
def remount(target: str, flags: int) -> None:
    """Remount a bind mount with ``flags``; in a user namespace, keeping the flags the kernel locked."""
    try:
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | flags)
    except (OSError, KernelError) as exc:   # sc.mount raises KernelError, which carries the errno too
        if exc.errno != errno.EPERM:
            raise
        # a mount that came from a more privileged namespace has its nosuid, nodev,
        # noexec and atime flags locked: repeat them (runc does the same)
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | flags | mounts.current_mount_flags(target))


def remount_root_readonly() -> Step:
    """root.readonly: remount / read-only once everything is mounted under it."""
    step = Step("remount_ro", call='mount(NULL, "/", NULL, MS_BIND|MS_REMOUNT|MS_RDONLY, NULL)',
                shell="mount -o remount,bind,ro /", why="root.readonly: writes to / now fail with EROFS")
    step.do(remount, "/", sc.MS_RDONLY)
    return step


def lookup_executable(config: BundleConfig) -> str:
    """Find process.args[0] as runc does (in the new root, along process.env's PATH), in runc's words."""
    name = config.args[0]
    quoted = json.dumps(name)
    if "/" in name:
        try:
            st = os.stat(name)
        except OSError as exc:
            raise InitError(f"exec: {quoted}: stat {name}: {exc.strerror.lower()}") from None
        if stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o111:
            raise InitError(f"exec: {quoted}: permission denied")
        return name
    path_env = config.path_env()
    for directory in path_env.split(":") if path_env else []:   # no PATH: nothing is searched (Go's LookPath)
        candidate = os.path.join(directory or ".", name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise InitError(f"exec: {quoted}: executable file not found in $PATH")


def set_rlimits(config: BundleConfig) -> None:
    """setrlimit(2) for each of process.rlimits (they survive execve)."""
    for number, soft, hard in config.rlimits:
        resource.setrlimit(number, (soft, hard))


def become_user(config: BundleConfig) -> Step:
    """Bounding set, then uid/gid/groups (keeping capabilities across setuid), then the other capability sets."""
    caps = config.capabilities
    held = security.held_capabilities()
    mask = lambda key: security.capability_mask(caps.get(key, ())) & held  # noqa: E731
    bounding, effective, permitted, inheritable = mask("bounding"), mask("effective"), mask("permitted"), \
        mask("inheritable")
    step = Step("set_user_and_capabilities",
                call=f"prctl(PR_CAPBSET_DROP …) to {bounding:#x}; setgroups({config.additional_gids}); "
                     f"setresgid({config.gid}); setresuid({config.uid}); capset(eff={effective:#x}, "
                     f"prm={permitted:#x}, inh={inheritable:#x}); ambient {list(caps.get('ambient', ()))}",
                shell=f"setpriv --reuid={config.uid} --regid={config.gid} --groups=… --bounding-set=… --inh-caps=…",
                why="the command runs as process.user, with exactly the capabilities config.json lists")

    def do() -> None:
        for cap in range(security.last_capability() + 1):
            if not bounding >> cap & 1:
                sc.drop_from_bounding_set(cap)
        sc.libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)   # setuid away from 0 would empty the permitted set
        os.setgroups(config.additional_gids)
        os.setresgid(config.gid, config.gid, config.gid)
        os.setresuid(config.uid, config.uid, config.uid)
        sc.libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
        sc.capset(effective, permitted, inheritable)
        sc.clear_ambient_capabilities()
        for name in caps.get("ambient", ()):
            # like runc, best effort: the kernel refuses one not in both permitted and inheritable
            sc.libc.prctl(sc.PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, security.CAPABILITIES.index(name), 0, 0)

    step.do(do)
    return step


def build_root(config: BundleConfig, cgroup_dirs: dict[str, str]) -> None:
    """Before pivot_root: propagation, the root mount, every config.json mount, /dev."""
    if config.shares_mounts:
        # the runtime's own mount namespace: its / is the host's, and stays as it is; only the
        # container's root mount (ours) gets the propagation
        mount_root(config)
        set_root_propagation(config, config.rootfs)
    else:
        set_root_propagation(config)
        mount_root(config)
    for mount in config.mounts:
        mount_entry(config, mount, cgroup_dirs)
    populate_dev(config)
    # runc creates process.cwd if the image lacks it
    cwd = mounts._inside(config.rootfs, config.cwd)
    if not os.path.lexists(cwd):
        os.makedirs(cwd, 0o755)


def change_root(rootfs: str) -> Step:
    """chroot(2) into the rootfs, for a container without a mount namespace of its own (as runc does).

    pivot_root would swap the root of every process in the mount namespace: the host's.
    chroot changes only this process's root; the host's filesystem stays mounted around it.
    """
    step = Step("chroot", call=f'chdir("{rootfs}"); chroot("."); chdir("/")', shell=f"chroot {rootfs}",
                why="no mount namespace of its own: pivot_root would move the host's root, chroot moves only ours")

    def do() -> None:
        os.chdir(rootfs)
        os.chroot(".")
        os.chdir("/")

    step.do(do)
    return step


def enter_root(config: BundleConfig) -> None:
    """pivot_root, then what needs the container's own view: sysctls, names, read-only and masked paths."""
    if config.shares_mounts:
        change_root(config.rootfs)
    else:
        mounts.pivot_root(config.rootfs)
        mounts.detach_old_root()
    apply_rootfs_propagation(config)
    if config.sysctl:
        write_sysctls(config.sysctl)
    if "net" in config.namespaces and not config.namespaces["net"]:
        # a new network namespace starts with lo down; runc brings it up too (its "loopback" network)
        namespaces.bring_up_loopback()
    if "uts" in config.namespaces:   # a new one, or one joined by path: it is the container's
        if config.hostname:
            namespaces.set_hostname(config.hostname)
        if config.domainname:
            set_domainname(config.domainname)
    if config.readonly:
        remount_root_readonly()
    if config.readonly_paths:
        mounts.readonly_paths(tuple(config.readonly_paths))
    if config.masked_paths:
        mounts.mask_paths(tuple(config.masked_paths))


def restrict_process(config: BundleConfig) -> None:
    """Resource limits, user, capabilities, no_new_privs, seccomp: in the order runc applies them."""
    set_rlimits(config)
    if config.oom_score_adj is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(config.oom_score_adj))
    if config.umask is not None:
        os.umask(config.umask)
    if config.seccomp is not None and not config.no_new_privileges:
        _load_seccomp(config.seccomp)   # without no_new_privs loading a filter needs CAP_SYS_ADMIN: before the drop
    become_user(config)
    try:
        os.chdir(config.cwd)
    except OSError as exc:
        raise InitError(f"chdir to cwd ({json.dumps(config.cwd)}) set in config.json failed: "
                        f"{exc.strerror.lower()}") from None
    if config.no_new_privileges:
        security.no_new_privileges()
        if config.seccomp is not None:
            _load_seccomp(config.seccomp)


def _load_seccomp(profile: dict) -> None:
    from ..kernel import seccomp   # imported (and the filter compiled) by create, before pivot_root

    seccomp.load_filter(profile)


def wait_for_start(fifo_fd: int) -> None:
    """Block until `runtime start` opens exec.fifo for reading, then tell it we are going."""
    # the fifo was opened O_PATH before pivot_root; reopening it through /proc for writing
    # is what blocks (a fifo's open for write waits for a reader)
    fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_fd)


def home_of(uid: int) -> str:
    """The user's home directory from the container's /etc/passwd, else "/" (what runc puts in HOME)."""
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def exec_process(path: str, config: BundleConfig, home: str) -> None:
    """execve(2) the container's command; every fd but stdio is closed on exec (no host fd leaks in)."""
    sc.close_range_cloexec(3)
    env = dict(item.split("=", 1) if "=" in item else (item, "") for item in config.env)
    env.setdefault("HOME", home)
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across execve
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    exec_sealed(path, config.args, env)   # never through the host's Python: see sealed_exec.py
