"""The container a submission's Jupyter kernel runs in: an OCI bundle run by `minicontainer runtime`.

The kernel is the container's PID 1. It gets the engine's default security profile (the
config.json `minicontainer run` would write: Docker's 14 capabilities, no_new_privs, the
default seccomp profile, masked and read-only paths, the device allow-list), plus:

- a **user namespace**: root in the container is an unprivileged host uid (a range of its
  own per job slot), so its capabilities cover only the namespaces the container owns. That
  is what lets a lab's own Sandbox unshare namespaces inside (CAP_SYS_ADMIN, which the
  seccomp profile then allows too) and bring a lab container's loopback up (CAP_NET_ADMIN,
  over its own network namespaces only) without any power over the host: host files stay
  owned by a uid the container can't act as, devices can't be made, /proc/sys can't be written;
- memory, pids and CPU limits on a cgroup the container can't write, and below it a
  **delegated** cgroup its root user owns, the root of its cgroup namespace: a lab's own
  engine creates its containers' cgroups there, always within the grader's limits
  (:class:`minicontainer.DelegatedCgroup`, which the engine owns);
- no network (a new network namespace with only loopback);
- a read-only root: the host's /usr, the project's venv and Python packages (never labs/,
  where the hidden tests are), a made-up /etc, and small tmpfs for /tmp and the working dir;
- the kernel's ZMQ sockets as unix sockets in a directory shared with the grader (ipc
  transport): the grader, not the container, holds the notebook and runs nbclient.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from minicontainer import DelegatedCgroup

PROJECT = Path(__file__).resolve().parent.parent       # the checkout: grading/ and minicontainer/ live here
UID_BASE = 1_000_000          # host uids the containers' root users map to: one range per job slot
UID_RANGE = 65_536
KERNEL_DIR_SIZE = "4m"
MOUNT_POINTS = ("proc", "dev", "sys", "tmp", "usr", "etc", "run/kernel", "work/submission")
KERNEL_LEAF = "kernel"        # the kernel's process lives in this leaf below the delegated cgroup (v2: no internal processes)
ETC_COPIED = ("ld.so.cache", "nsswitch.conf", "localtime")
MERGED_USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass
class SandboxLimits:
    memory: int = 768 * 2**20
    pids: int = 256
    cpus: float = 1.0
    tmp_size: str = "256m"        # /tmp: the lab's engine root lives here; tmpfs pages count against memory
    work_size: str = "64m"        # the kernel's working directory
    cgroups: int = 64             # v2: cgroups the container may create (cgroup.max.descendants); v1 has no such cap


def runtime_command() -> list[str]:
    """How to call `minicontainer runtime` (the same Python as the grader)."""
    return [sys.executable, "-m", "minicontainer", "runtime"]


def default_config() -> dict:
    """The config.json the engine writes for `run --cap-add SYS_ADMIN --cap-add NET_ADMIN` (its default
    security profile, with the seccomp rules Docker's profile grants SYS_ADMIN), via `run --explain`."""
    out = subprocess.run([sys.executable, "-m", "minicontainer", "run", "--explain", "--cap-add", "SYS_ADMIN",
                          "--cap-add", "NET_ADMIN", "busybox", "true"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("\n{", out.index("config.json")) + 1:])


def build_rootfs(root: Path) -> Path:
    """An empty read-only root with mount points and Debian's merged-/usr links, and a tiny /etc."""
    for d in MOUNT_POINTS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in MERGED_USR_LINKS:
        if os.path.islink(f"/{link}") and not (root / link).is_symlink():
            (root / link).symlink_to(os.readlink(f"/{link}"))
    etc = root / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
    (etc / "hostname").write_text("grading\n")
    for name in ETC_COPIED:            # the dynamic linker's cache: ctypes.util.find_library reads it
        if os.path.isfile(f"/etc/{name}"):
            shutil.copyfile(f"/etc/{name}", etc / name)
    for path in python_paths():
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return root


def python_paths() -> list[str]:
    """What the kernel's Python needs beyond /usr: the venv and the project's two packages."""
    paths = [sys.prefix, str(PROJECT / "minicontainer"), str(PROJECT / "grading")]
    return [p for p in paths if not p.startswith("/usr/")]


def _bind(path: str, target: str | None = None, *, readonly: bool = True) -> dict:
    return {"destination": target or path, "type": "bind", "source": path,
            "options": ["rbind", "ro" if readonly else "rw", "nosuid", "nodev"] + ([] if readonly else ["noexec"])}


def _tmpfs(target: str, size: str) -> dict:
    return {"destination": target, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", f"size={size}", "mode=1777"]}


def enter_kernel_leaf() -> list[str]:
    """A command prefix: move this process into the kernel's leaf cgroup (in every hierarchy), then exec the rest.

    The runtime puts the container's first process in the delegated cgroup and starts the
    cgroup namespace there, so the container sees that cgroup as its /sys/fs/cgroup. In
    cgroup v2 a cgroup that hands controllers to its children may hold no process itself
    ("no internal processes"), so the kernel moves one level down before it starts, as
    systemd's delegated units do; the same layout on v1 keeps both versions alike.
    """
    leaves = f"/sys/fs/cgroup/{KERNEL_LEAF}/cgroup.procs /sys/fs/cgroup/*/{KERNEL_LEAF}/cgroup.procs"   # v2, v1
    script = f'set -e; for procs in {leaves}; do if [ -e "$procs" ]; then echo $$ > "$procs"; fi; done; exec "$@"'
    return ["/bin/sh", "-c", script, "enter-kernel-leaf"]


def kernel_config(base: dict, rootfs: Path, kernel_dir: Path, slot: int, limits: SandboxLimits,
                  connection_file: str, cgroups_path: str = "") -> dict:
    """The kernel's config.json: ``base`` (the engine's default profile) with this container's changes."""
    config = json.loads(json.dumps(base))
    config.pop("annotations", None)
    process = config["process"]
    caps = process["capabilities"]["bounding"]
    process["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")} | {"inheritable": [], "ambient": []}
    process["args"] = [*enter_kernel_leaf(), "/usr/bin/env", "PYTHONDONTWRITEBYTECODE=1", sys.executable, "-m",
                       "ipykernel_launcher", "-f", connection_file, "--HistoryManager.enabled=False"]
    process["cwd"] = "/work/submission"
    process["env"] = ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/tmp", "LANG=C.UTF-8",
                      "IPYTHONDIR=/tmp/.ipython", "JUPYTER_RUNTIME_DIR=/tmp/.jupyter-runtime",
                      "MPLCONFIGDIR=/tmp/.matplotlib", "MPLBACKEND=agg",
                      "MINICONTAINER_ROOT=/tmp/engine/lib", "MINICONTAINER_RUN=/tmp/engine/run",
                      "MINICONTAINER_CONFIG_DIR=/tmp/engine/config"]
    process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                          {"type": "RLIMIT_FSIZE", "hard": 128 * 2**20, "soft": 128 * 2**20},
                          {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}]
    process["user"] = {"uid": 0, "gid": 0}
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["hostname"] = "grading"
    uid = UID_BASE + slot * UID_RANGE
    mounts = [m for m in config["mounts"] if m["destination"] in ("/proc", "/dev", "/sys", "/dev/pts", "/dev/shm",
                                                                  "/dev/mqueue")]
    # the tmpfs mounts go first: a checkout under /tmp (a CI clone, say) is bound on top of
    # the container's empty /tmp instead of being hidden by it
    mounts += [_tmpfs("/tmp", limits.tmp_size), _tmpfs("/work/submission", limits.work_size),
               _bind("/usr"), *(_bind(p) for p in python_paths()),
               _bind(str(kernel_dir), "/run/kernel", readonly=False)]
    # the container's own cgroups, writable: the runtime mounts the cgroup it made (the
    # delegated one) as the whole of /sys/fs/cgroup, and the cgroup namespace starts there
    mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                   "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]})
    config["mounts"] = mounts
    linux = config["linux"]
    linux.pop("cgroupsPath", None)
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    linux["namespaces"] = [{"type": t} for t in ("user", "pid", "network", "ipc", "uts", "mount", "cgroup")]
    linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": UID_RANGE}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": uid, "size": UID_RANGE}]
    resources = linux.setdefault("resources", {})
    # the memory, pids and CPU limits are on the delegated cgroup's parent, which the grader
    # made and the container can't write (DelegatedCgroup); the runtime still writes the
    # device allow-list into the delegated cgroup, from the host, where only host root can change it
    for key in ("memory", "pids", "cpu"):
        resources.pop(key, None)
    # the container's network is its own loopback and nothing else (a lab may serve on
    # 127.0.0.1): the runtime brings lo up in a new network namespace, as runc does
    return config


class ContainerKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel is `minicontainer runtime run` of a prepared bundle.

    Interrupts go as messages (the runtime's process is not the kernel). The kernel ends
    when Sandbox.remove deletes the container, with everything it started.
    """

    def __init__(self, *, bundle: Path, container_id: str, runtime_root: Path, kernel_dir: Path,
                 prefix: list[str] | None = None, **kw):
        super().__init__(transport="ipc", ip=str(kernel_dir / "k"), **kw)
        self.bundle, self.container_id, self.runtime_root = bundle, container_id, runtime_root
        self.connection_file = str(kernel_dir / "host-connection.json")
        self._kernel_spec = KernelSpec(argv=[*(prefix or []), *runtime_command(), "--root", str(runtime_root), "run",
                                             "-b", str(bundle), container_id],
                                       display_name="grading sandbox", language="python",
                                       interrupt_mode="message", env={})

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        # what the container writes to its own stdout/stderr (not through Jupyter) goes
        # nowhere: it can't flood the grader's terminal or fill its disk
        kw["stdout"] = kw["stderr"] = subprocess.DEVNULL
        kw["stdin"] = subprocess.DEVNULL
        await super()._async_launch_kernel(kernel_cmd, **kw)
        self.kernel_process = self.provisioner.process

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        """The runtime's command line; the kernel's own arguments are in config.json."""
        return list(self.kernel_spec.argv)

    def write_connection_file(self, **kwargs) -> None:
        """The grader's connection file, and the kernel's copy with the paths it sees inside."""
        super().write_connection_file(**kwargs)
        info = json.loads(Path(self.connection_file).read_text())
        info["ip"] = "/run/kernel/k"
        inside = Path(self.connection_file).with_name("connection.json")
        inside.write_text(json.dumps(info))
        os.chown(inside, self.container_uid, self.container_uid)

    container_uid = UID_BASE
    kernel_process: subprocess.Popen | None = None

    def reap(self) -> None:
        """Wait for the runtime's process once the container is gone (nbclient leaves a kernel
        manager it was handed running: it only shuts down kernels it started)."""
        if self.kernel_process is None:
            return
        try:
            self.kernel_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kernel_process.kill()
            self.kernel_process.wait()


@dataclass
class Sandbox:
    """One submission's bundle: a config.json, the kernel's socket directory, a fresh working dir."""

    bundle: Path
    kernel_dir: Path
    container_id: str
    runtime_root: Path
    slot: int
    cgroup: DelegatedCgroup | None = None

    @classmethod
    def prepare(cls, base_config: dict, rootfs: Path, workspace: Path, runtime_root: Path, slot: int,
                limits: SandboxLimits) -> "Sandbox":
        container_id = "grading-" + uuid.uuid4().hex[:12]
        bundle = workspace / container_id
        kernel_dir = bundle / "kernel"
        kernel_dir.mkdir(parents=True)
        uid = UID_BASE + slot * UID_RANGE
        os.chmod(bundle, 0o711)
        # the one host directory the container may write to (its sockets go there): a small
        # tmpfs of its own, so writing into it can't fill the grader's disk
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={KERNEL_DIR_SIZE},mode=0700,uid={uid},gid={uid},"
                        "nosuid,nodev,noexec", "grading-kernel", str(kernel_dir)], check=True, capture_output=True)
        sandbox = cls(bundle, kernel_dir, container_id, runtime_root, slot)
        try:
            sandbox.cgroup = DelegatedCgroup.create(container_id, uid, memory=limits.memory, pids=limits.pids,
                                                   cpus=limits.cpus, max_descendants=limits.cgroups,
                                                   leaf=KERNEL_LEAF)
            config = kernel_config(base_config, rootfs, kernel_dir, slot, limits, "/run/kernel/connection.json",
                                   sandbox.cgroup.cgroups_path())
            (bundle / "config.json").write_text(json.dumps(config, indent=1))
        except BaseException:
            sandbox.remove()
            raise
        return sandbox

    def kernel_manager(self) -> ContainerKernelManager:
        km = ContainerKernelManager(bundle=self.bundle, container_id=self.container_id,
                                    runtime_root=self.runtime_root, kernel_dir=self.kernel_dir,
                                    prefix=self.cgroup.join_others() if self.cgroup else [])
        km.container_uid = UID_BASE + self.slot * UID_RANGE
        return km

    def remove(self) -> None:
        """Delete the container (and every process in it) and its cgroups, unmount its socket directory, remove the
        bundle."""
        if self.cgroup is not None:
            # the runtime kills only the cgroup it put the container in: every process below it
            # (the kernel's leaf, whatever a lab left) goes first; the runtime's delete then
            # removes the child cgroups with the container's own, as runc does
            self.cgroup.kill_all()
        subprocess.run([*runtime_command(), "--root", str(self.runtime_root), "delete", "-f", self.container_id],
                       capture_output=True)
        if self.cgroup is not None:
            self.cgroup.remove()
        subprocess.run(["umount", "-l", str(self.kernel_dir)], capture_output=True)
        shutil.rmtree(self.bundle, ignore_errors=True)


class GradingEnvironment:
    """What every container of a batch shares: the read-only root, the runtime's state
    directory, the engine's default config; removed (with every bundle) on close."""

    def __init__(self, limits: SandboxLimits | None = None):
        self.limits = limits or SandboxLimits()
        self.workspace = Path(tempfile.mkdtemp(prefix="grading-"))
        os.chmod(self.workspace, 0o711)     # the containers' users pass through to their bundles, no more
        try:
            self.rootfs = build_rootfs(self.workspace / "rootfs")
            self.runtime_root = self.workspace / "runtime"
            self.runtime_root.mkdir()
            self.base_config = default_config()
        except BaseException:
            shutil.rmtree(self.workspace, ignore_errors=True)
            raise

    def sandbox(self, slot: int) -> Sandbox:
        """A fresh bundle for one submission, its root user mapped to job slot ``slot``'s uid range."""
        return Sandbox.prepare(self.base_config, self.rootfs, self.workspace, self.runtime_root, slot, self.limits)

    def runner(self, slot: int = 0):
        """A grade.Runner that runs each notebook in a fresh container of this environment."""
        from grading.execute import run_notebook

        def run(nb, workdir, limits):
            sandbox = self.sandbox(slot)
            km = sandbox.kernel_manager()
            try:
                return run_notebook(nb, cwd=str(sandbox.bundle), km=km, cell_timeout=limits.cell_timeout,
                                    notebook_timeout=limits.notebook_timeout, output_cap=limits.output_cap)
            finally:
                try:
                    sandbox.remove()
                finally:
                    km.reap()     # the runtime's process, even if removing the container failed
        return run

    def close(self) -> None:
        shutil.rmtree(self.workspace, ignore_errors=True)

    def __enter__(self) -> "GradingEnvironment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
