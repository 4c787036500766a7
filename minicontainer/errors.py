"""Errors that a person at a terminal can act on.

Every error names the problem and the fix in one line. The CLI prints ``str(error)``
and exits non-zero; it never shows a traceback for these.
"""
from __future__ import annotations

import errno as _errno
import os


class MinicontainerError(Exception):
    """Base class: the message is one line that names the problem and the fix."""

    exit_code = 125  # docker's code for "the engine itself failed"


class KernelError(MinicontainerError):
    """A syscall failed; carries the step name and the errno."""

    def __init__(self, step: str, err: int, hint: str = ""):
        self.step = step
        self.errno = err
        name = _errno.errorcode.get(err, str(err))
        msg = f"{step} failed: {name} ({os.strerror(err)})"
        super().__init__(f"{msg}: {hint}" if hint else msg)


class NotRootError(MinicontainerError):
    """minicontainer needs root (CAP_SYS_ADMIN) for namespaces, mounts and cgroups."""

    def __init__(self, what: str = "running a container"):
        super().__init__(f"{what} needs root (CAP_SYS_ADMIN for namespaces, mounts and cgroups): run it with sudo")


class ImageNotFound(MinicontainerError):
    exit_code = 125


class InvalidReference(MinicontainerError):
    pass


class InvalidArgument(MinicontainerError):
    exit_code = 125


class StateError(MinicontainerError):
    """A container or image is in the wrong state for the requested action."""


class LayerError(MinicontainerError):
    """A layer is malformed, hostile, or does not match its digest."""


class RegistryError(MinicontainerError):
    """A registry refused a request or could not be reached."""


def require_root(what: str = "running a container") -> None:
    """Raise NotRootError unless the effective uid is 0."""
    if os.geteuid() != 0:
        raise NotRootError(what)
