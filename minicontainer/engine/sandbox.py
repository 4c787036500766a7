"""Sandbox: build a container one kernel step at a time, from a notebook.

The notebook's own kernel never changes its namespaces or mounts. A Sandbox starts a
helper process (minicontainer.runtime.sandbox_helper) in the host's namespaces and asks
it to take one step at a time; each call returns the Step it took, and between calls
``sandbox.pid`` can be inspected from the host (/proc/PID/ns, its cgroup, its mounts).

    sb = Sandbox("busybox")
    sb.unshare("pid", "mnt", "uts", "ipc", "net")   # the helper forks: its child is PID 1
    sb.sethostname("box")
    sb.join_cgroup(memory="64m")
    sb.mount_overlay(); sb.mount_proc(); sb.pivot_root()
    sb.run(["ps"])                                  # runs inside, output captured
    sb.exec(["sh", "-c", "echo done"])              # the helper becomes the command
    sb.close()
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict

from ..errors import MinicontainerError, require_root
from ..image.store import ImageStore
from ..kernel.cgroups import Cgroup, Limits, open_cgroup, parse_cpus, parse_memory
from ..kernel.namespaces import namespace_ids
from ..trace import Step, Trace
from .containers import create_record, remove_record
from .paths import engine_root
from .run import RunOptions, cgroup_name, get_image, spec_for


class SandboxError(MinicontainerError):
    """A sandbox step failed; the failed Step is the last one in ``sandbox.trace``."""


class Sandbox:
    """A helper process the notebook drives one container step at a time."""

    def __init__(self, image: str = "busybox", *, hostname: str = "sandbox", env: list[str] | None = None):
        require_root("a Sandbox")
        opts = RunOptions.parse(image, None, hostname=hostname, env=env)
        store = ImageStore(engine_root())
        img = get_image(store, opts.image)
        lowers = store.lower_dirs(img)
        self.record = create_record(name="", image=opts.image, image_id=img.id, args=[], env=opts.env,
                                    hostname=hostname)
        self.spec = spec_for(self.record, img, lowers, opts)
        # No device cgroup until join_cgroup: until then a node made with CAP_MKNOD could
        # open the host's disk, so the sandbox's commands go without it.
        self._capabilities = self.spec.capabilities
        self.spec.capabilities = tuple(c for c in self._capabilities if c != "CAP_MKNOD")
        self.trace = Trace()
        self.cgroup: Cgroup | None = None
        self.exit_code: int | None = None
        env = {**os.environ, "MINICONTAINER_SANDBOX_SPEC": json.dumps(asdict(self.spec))}
        # stderr goes to a file, read after exec: a pipe could fill up and block the command
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, "-m", "minicontainer.runtime.sandbox_helper"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=env, close_fds=True)
        self.pid = self._proc.pid

    # ---- talking to the helper --------------------------------------------------------
    def _request(self, op: str, **args) -> dict:
        if self._proc.poll() is not None or self.exit_code is not None:
            raise SandboxError("this sandbox has finished (its process exited): start a new Sandbox()")
        self._proc.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise SandboxError(f"the sandbox helper exited during {op!r}: start a new Sandbox()")
        reply = json.loads(line)
        steps = [Step.from_dict(d) for d in reply.pop("steps", [])]
        self.trace.extend(steps)
        reply["_steps"] = steps
        if not reply.pop("ok"):
            raise SandboxError(reply["error"])
        return reply

    def _step(self, op: str, pick: str | None = None, **args) -> Step:
        """Send one request; return the step called ``pick`` (default: the first one taken)."""
        steps = self._request(op, **args)["_steps"]
        return next((s for s in steps if s.name == pick), steps[0]) if pick else steps[0]

    # ---- the steps ---------------------------------------------------------------------
    def unshare(self, *kinds: str) -> Step:
        """unshare(2) the given namespaces; with "pid", the helper forks and its child (PID 1) carries on."""
        reply = self._request("unshare", kinds=list(kinds or ("pid", "mnt", "uts", "ipc", "net")))
        self.pid = reply["pid"]
        return reply["_steps"][0]

    def sethostname(self, name: str) -> Step:
        return self._step("sethostname", name=name)

    def loopback_up(self) -> Step:
        return self._step("loopback_up")

    def join_cgroup(self, *, memory: str | int | None = None, cpus: str | float | None = None,
                    pids_limit: int | None = None) -> Step:
        """Create the container's cgroup with limits (from the host), then move the sandbox into it."""
        if any(step.name == "pivot_root" and not step.error for step in self.trace.steps):
            # the sandbox writes its own pid into cgroup.procs, and after pivot_root the
            # host's /sys/fs/cgroup is no longer in its view (the engine opens the file before)
            raise SandboxError("join_cgroup after pivot_root: the sandbox can no longer see the host's "
                               "/sys/fs/cgroup; join the cgroup before pivot_root, as the engine does")
        limits = Limits(memory=parse_memory(memory) if memory is not None else None,
                        cpus=parse_cpus(cpus) if cpus is not None else None, pids=pids_limit)
        if self.cgroup is None:
            self.cgroup = open_cgroup(cgroup_name(self.record.id))
            from .. import trace as _trace
            with _trace.recording(self.trace):
                self.cgroup.create()
                self.cgroup.set_limits(limits)
                self.cgroup.allow_devices()   # the same device allow-list as run's
        self.spec.capabilities = self._capabilities
        return self._step("join_cgroup", procs=self.cgroup.procs_files(), capabilities=list(self._capabilities))

    def make_private(self) -> Step:
        return self._step("make_private")

    def mount_overlay(self) -> Step:
        """Make / private (so nothing propagates to the host), then mount the image's overlay."""
        return self._step("mount_overlay", pick="mount_overlay")

    def mount_proc(self) -> Step:
        return self._step("mount_proc")

    def mount_dev(self) -> Step:
        return self._step("mount_dev")

    def mount_sys(self) -> Step:
        return self._step("mount_sys")

    def pivot_root(self) -> Step:
        """pivot_root into the overlay, then detach the old root."""
        return self._step("pivot_root", pick="pivot_root")

    def run(self, args: list[str] | str) -> subprocess.CompletedProcess:
        """Run a command inside the sandbox as it is now; returns its exit code and output."""
        args = ["sh", "-c", args] if isinstance(args, str) else list(args)
        reply = self._request("run", args=args)
        return subprocess.CompletedProcess(args, reply["exit_code"], reply["stdout"], reply["stderr"])

    def exec(self, args: list[str] | str) -> subprocess.CompletedProcess:
        """The last step: execve the command in place of the helper, and collect its output."""
        args = ["sh", "-c", args] if isinstance(args, str) else list(args)
        self._proc.stdin.write((json.dumps({"op": "exec", "args": {"args": args}}) + "\n").encode())
        self._proc.stdin.close()
        output = []
        for raw in self._proc.stdout:
            record = None
            if raw.startswith(b"{") and not output:
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = None
            if record is None:
                output.append(raw)
            elif "step" in record:
                self.trace.add(Step.from_dict(record["step"]))
            elif not record.get("ok", True):
                raise SandboxError(record["error"])
        self.exit_code = self._proc.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace")
        return subprocess.CompletedProcess(args, self.exit_code, b"".join(output).decode(errors="replace"), stderr)

    # ---- looking from the host ---------------------------------------------------------
    def namespace_ids(self) -> dict[str, int]:
        """The sandbox's namespace ids, read from the host's /proc/PID/ns."""
        return namespace_ids(self.pid)

    def close(self) -> None:
        """Kill the sandbox's processes and remove its cgroup and container directory."""
        for pid in {self.pid, self._proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        self._proc.wait()
        self._stderr.close()
        if self.cgroup is not None:
            self.cgroup.kill_all()
            self.cgroup.remove()
            self.cgroup = None
        remove_record(self.record)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Sandbox pid={self.pid} steps={len(self.trace)}>"
