"""Mounts: build the container's root filesystem and switch to it.

The order matters and mirrors runc: make / private, mount the overlay, bind volumes,
mount /proc, /dev and /sys inside the new root, then pivot_root into it and detach the
old root, so nothing of the host's filesystem stays reachable.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..trace import Step
from . import syscalls as sc
from .devices import in_initial_user_namespace


@dataclass(frozen=True)
class Volume:
    """A bind mount of a host path into the container: -v SRC:DST[:ro]."""

    source: str
    target: str
    readonly: bool = False

    @classmethod
    def parse(cls, text: str) -> "Volume":
        """Parse 'SRC:DST[:ro|rw]' as docker does; paths must be absolute."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise InvalidArgument(f"invalid volume {text!r}: use -v /host/path:/container/path[:ro]")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise InvalidArgument(f"invalid volume mode {parts[2]!r} in {text!r}: use 'ro' or 'rw'")
        src, dst = parts[0], parts[1]
        if not src.startswith("/") or not dst.startswith("/"):
            raise InvalidArgument(f"invalid volume {text!r}: both paths must be absolute, e.g. -v /srv/data:/data")
        if not os.path.exists(src):
            raise InvalidArgument(f"volume source {src!r} does not exist on the host: create it first (mkdir -p {src})")
        if os.path.normpath(dst) == "/":
            raise InvalidArgument(f"invalid volume {text!r}: can't mount over the container's /")
        return cls(os.path.realpath(src), os.path.normpath(dst), len(parts) == 3 and parts[2] == "ro")


def _mount_line(target: str) -> str:
    """The /proc/self/mountinfo line for ``target``: cheap evidence that a mount happened."""
    with open("/proc/self/mountinfo") as f:
        lines = [line.split(" - ")[0].split()[4:7] + line.split(" - ")[1].split()[:1]
                 for line in f if line.split()[4] == target]
    return " ".join(lines[-1]) if lines else "(not in mountinfo)"


def make_mounts_private() -> Step:
    """Set / and everything under it to private propagation (MS_REC|MS_PRIVATE)."""
    step = Step("make_private", call='mount(NULL, "/", NULL, MS_REC|MS_PRIVATE, NULL)',
                shell="mount --make-rprivate /",
                why="on a systemd host / is shared: without this our mounts would leak to the host "
                    "and pivot_root would fail with EINVAL")
    step.do(sc.mount, None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    return step


def overlay_options(lowers: list[str], upper: str | None, work: str | None) -> str:
    """The overlayfs option string; lowers are listed top layer first, as overlayfs wants."""
    opts = "lowerdir=" + ":".join(lowers)
    if upper:
        opts += f",upperdir={upper},workdir={work}"
    return opts


def mount_overlay(lowers: list[str], upper: str | None, work: str | None, target: str) -> Step:
    """mount -t overlay: stack the image's read-only layers under the container's own upper dir."""
    opts = overlay_options(lowers, upper, work)
    step = Step("mount_overlay", call=f'mount("overlay", "{target}", "overlay", 0, "{opts}")',
                shell=f"mount -t overlay overlay -o {opts} {target}",
                why="image layers (镜像层) stay read-only and shared; every write lands in this container's upper dir")
    step.do(sc.mount, "overlay", target, "overlay", 0, opts, evidence=lambda: {"mountinfo": _mount_line(target)})
    return step


def _inside(rootfs: str, path: str) -> str:
    """``path`` (a container path) under ``rootfs``, refusing symlinks on the way.

    Before pivot_root a symlink in the image (say /data -> /etc) would resolve against the
    host's root, so we never follow one while preparing mount points.
    """
    current = rootfs
    for part in [p for p in path.split("/") if p and p != "."]:
        if part == "..":
            raise InvalidArgument(f"container path {path!r} must not contain '..'")
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise InvalidArgument(f"container path {path!r} goes through a symlink in the image: mount on its target instead")
    return current


def _ensure_mountpoint(path: str, is_dir: bool) -> None:
    if os.path.lexists(path):
        return
    if is_dir:
        os.makedirs(path, mode=0o755)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        open(path, "a").close()


def _mount_at(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None,
              *, is_dir: bool = True) -> None:
    """Create the mount point if the image lacks it, then mount(2)."""
    _ensure_mountpoint(target, is_dir)
    sc.mount(source, target, fstype, flags, data)


def bind_volume(rootfs: str, volume: Volume) -> list[Step]:
    """Bind-mount a host path into the rootfs; a read-only volume needs a second remount."""
    target = _inside(rootfs, volume.target)
    steps = [Step("bind_volume", call=f'mount("{volume.source}", "{target}", NULL, MS_BIND|MS_REC, NULL)',
                  shell=f"mount --rbind {volume.source} {target}",
                  why="a volume (数据卷) is the host directory itself, seen at a second place")]
    steps[0].do(lambda: _mount_at(volume.source, target, None, sc.MS_BIND | sc.MS_REC,
                                  is_dir=os.path.isdir(volume.source)))
    if volume.readonly:
        steps.append(remount_readonly(target, bind=True))
    return steps


def remount_readonly(target: str, *, bind: bool = True) -> Step:
    """Remount an existing (bind) mount read-only."""
    flags = sc.MS_REMOUNT | sc.MS_RDONLY | (sc.MS_BIND if bind else 0)
    step = Step("remount_ro", call=f'mount(NULL, "{target}", NULL, MS_BIND|MS_REMOUNT|MS_RDONLY, NULL)',
                shell=f"mount -o remount,bind,ro {target}",
                why="a bind mount takes its flags from a remount; writes now fail with EROFS")
    step.do(sc.mount, None, target, None, flags)
    return step


def mount_proc(rootfs: str) -> Step:
    """Mount a fresh procfs: it shows the processes of the mounter's pid namespace only."""
    target = _inside(rootfs, "/proc")
    step = Step("mount_proc", call=f'mount("proc", "{target}", "proc", MS_NOSUID|MS_NODEV|MS_NOEXEC, NULL)',
                shell=f"mount -t proc proc {target}",
                why="/proc must be mounted by a process inside the new pid namespace to list only its processes")
    step.do(_mount_at, "proc", target, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    return step


def mount_sys(rootfs: str, readonly: bool = True) -> Step:
    """Mount sysfs, read-only unless ``readonly=False`` (--privileged): the container may read kernel info but never change it."""
    target = _inside(rootfs, "/sys")
    flags = (sc.MS_RDONLY if readonly else 0) | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    shown = ("MS_RDONLY|" if readonly else "") + "MS_NOSUID|MS_NODEV|MS_NOEXEC"
    step = Step("mount_sys", call=f'mount("sysfs", "{target}", "sysfs", {shown}, NULL)',
                shell=f"mount -t sysfs -o {'ro' if readonly else 'rw'} sysfs {target}",
                why="read-only /sys: tools can look, but no kernel setting can be changed from inside" if readonly
                else "read-write /sys, as --privileged asks: the container can change host-wide kernel settings")
    step.do(_mount_at, "sysfs", target, "sysfs", flags)
    return step


# name -> (major, minor); the minimal set the OCI runtime spec requires
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


def _populate_dev(dev: str, bind_nodes: bool = False) -> None:
    _ensure_mountpoint(dev, True)
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID, "mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        if bind_nodes:
            bind_device_node(f"/dev/{name}", f"{dev}/{name}")
            continue
        os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)  # mknod honours the umask
    os.mkdir(f"{dev}/pts", 0o755)
    sc.mount("devpts", f"{dev}/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.mkdir(f"{dev}/shm", 0o1777)
    sc.mount("shm", f"{dev}/shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=1777,size=65536k")
    for link, target in [("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]:
        os.symlink(target, f"{dev}/{link}")


def bind_device_node(source: str, target: str) -> None:
    """Bind the device node ``source`` onto an empty file at ``target``: a device node without mknod."""
    os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
    if not os.path.lexists(target):
        open(target, "a").close()
    sc.mount(source, target, None, sc.MS_BIND)


def mount_dev(rootfs: str) -> Step:
    """A minimal /dev: a tmpfs with null, zero, full, random, urandom, tty, pts and shm.

    In a user namespace other than the host's, the kernel refuses mknod of any device, even
    to that namespace's root; there the nodes are bind mounts of our own /dev's, as rootless
    runc makes them.
    """
    dev = _inside(rootfs, "/dev")
    bind_nodes = not in_initial_user_namespace()
    if bind_nodes:
        step = Step("mount_dev", call=f'mount("tmpfs", "{dev}", "tmpfs"); bind /dev/null, zero, full, random, '
                                      f'urandom, tty onto empty files; mount devpts on pts, tmpfs on shm',
                    shell=f"mount -t tmpfs tmpfs {dev} && touch {dev}/null && mount --bind /dev/null {dev}/null && …",
                    why="in a user namespace mknod is refused (EPERM), so the safe devices are bind mounts of "
                        "the ones this process already has, never the host's disks")
    else:
        step = Step("mount_dev", call=f'mount("tmpfs", "{dev}", "tmpfs"); mknod null 1:3, zero 1:5, full 1:7, '
                                      f'random 1:8, urandom 1:9, tty 5:0; mount devpts on pts, tmpfs on shm',
                    shell=f"mount -t tmpfs tmpfs {dev} && mknod -m 666 {dev}/null c 1 3 && …",
                    why="the container gets only the safe devices, never the host's disks")
    step.do(_populate_dev, dev, bind_nodes, evidence=lambda: {"/dev": " ".join(sorted(os.listdir(dev)))})
    return step


def _pivot(rootfs: str) -> None:
    os.chdir(rootfs)
    sc.pivot_root(".", ".")


def pivot_root(rootfs: str) -> Step:
    """pivot_root into the rootfs; the old root stays stacked on "." until it is detached."""
    step = Step("pivot_root", call=f'chdir("{rootfs}"); pivot_root(".", ".")',
                shell=f"cd {rootfs} && pivot_root . .",
                why="swap the mount namespace's root to the container's rootfs; unlike chroot, the old root "
                    "can then be unmounted so there is no way back")
    step.do(_pivot, rootfs)
    return step


def _detach_old_root() -> None:
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def detach_old_root() -> Step:
    """Lazily unmount the old root that pivot_root left stacked on '/'."""
    step = Step("umount_old_root", call='umount2(".", MNT_DETACH); chdir("/")', shell="umount -l .",
                why="after this the host's filesystem is unreachable from inside the container",
                )
    step.do(_detach_old_root, evidence=lambda: {"/ now holds": " ".join(sorted(os.listdir("/"))[:12])})
    return step


# runc's default spec: kernel files a container must not read (masked) or change (read-only)
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def mask_paths(paths: tuple[str, ...] = MASKED_PATHS) -> Step:
    """Hide kernel files from the container: /dev/null over a file, an empty read-only tmpfs over a dir."""
    step = Step("mask_paths", call=f"mount(\"/dev/null\" or \"tmpfs\", …, MS_BIND | MS_RDONLY) on {len(paths)} paths",
                shell="mount --bind /dev/null /proc/kcore; mount -t tmpfs -o ro tmpfs /proc/acpi; …",
                why="/proc/kcore (the host's memory), /proc/keys, /proc/timer_list … reveal the host's kernel")

    def mask() -> str:
        done = []
        for path in paths:
            if os.path.isdir(path):
                sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
            elif os.path.exists(path):
                sc.mount("/dev/null", path, None, sc.MS_BIND)
            else:
                continue   # this kernel has no such file: nothing to hide
            done.append(path)
        return "masked " + " ".join(done)

    step.do(mask)
    return step


MS_STRICTATIME = 1 << 24
_STATVFS_FLAGS = {os.ST_NOSUID: sc.MS_NOSUID, os.ST_NODEV: sc.MS_NODEV, os.ST_NOEXEC: sc.MS_NOEXEC,
                  os.ST_NOATIME: sc.MS_NOATIME, os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}


def current_mount_flags(path: str) -> int:
    """The MS_* flags the mount holding ``path`` has now (statvfs's f_flag, translated)."""
    flags = os.statvfs(path).f_flag
    ms_flags = sum(ms for st, ms in _STATVFS_FLAGS.items() if flags & st)
    if not flags & (os.ST_NOATIME | os.ST_RELATIME):
        # strictatime shows as no flag at all, but a remount without MS_STRICTATIME means
        # relatime, which the kernel refuses where the atime flags are locked (a user namespace)
        ms_flags |= MS_STRICTATIME
    return ms_flags


def readonly_paths(paths: tuple[str, ...] = READONLY_PATHS) -> Step:
    """Bind each path onto itself, then remount it read-only: readable, never writable."""
    step = Step("readonly_paths", call=f"mount(path, path, MS_BIND|MS_REC); mount(MS_BIND|MS_REMOUNT|MS_RDONLY) "
                                       f"on {len(paths)} paths",
                shell="mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys; …",
                why="/proc/sys holds host-wide kernel settings (sysctl) and /proc/sysrq-trigger can reboot the host")

    def protect() -> str:
        done = []
        for path in paths:
            if not os.path.exists(path):
                continue
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
            # repeat the flags it has (nosuid, noexec …): a bind remount that drops a flag
            # the kernel locked, as in a user namespace, fails with EPERM
            sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | current_mount_flags(path))
            done.append(path)
        return "read-only " + " ".join(done)

    step.do(protect, evidence=lambda: {"/proc/sys": _mount_line("/proc/sys")})
    return step
