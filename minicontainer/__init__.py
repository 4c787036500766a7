"""minicontainer: a teaching container engine with every kernel step inspectable.

    >>> import minicontainer
    >>> result = minicontainer.run("busybox", ["echo", "hi"])
    >>> result.exit_code, result.stdout, result.trace

The public API is imported lazily so the CLI starts fast.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which costs the CLI ~10 ms

__version__ = "0.1.0"
__all__ = ["run", "plan", "create", "start", "stop", "restart", "kill", "pause", "unpause", "rm", "exec", "ps",
           "logs", "wait", "inspect", "commit", "build", "history", "Sandbox", "StepPlayer", "images", "pull", "push", "tag", "Trace", "Step", "namespace_ids",
           "DelegatedCgroup", "MinicontainerError"]

if TYPE_CHECKING:  # pragma: no cover
    from .engine.delegated_cgroup import DelegatedCgroup
    from .engine.run import plan, run
    from .engine.sandbox import Sandbox
    from .errors import MinicontainerError
    from .kernel.namespaces import namespace_ids
    from .step_player import StepPlayer
    from .trace import Step, Trace

_LAZY = {
    "run": ("engine.run", "run"), "plan": ("engine.run", "plan"), "RunResult": ("engine.run", "RunResult"),
    "Sandbox": ("engine.sandbox", "Sandbox"), "images": ("engine.images", "list_images"),
    "pull": ("engine.images", "pull_image"), "push": ("engine.images", "push_image"),
    "tag": ("engine.images", "tag_image"),
    # the lifecycle: run(detach=True) or create, then these, by name or id
    "create": ("engine.run", "create"), "start": ("engine.verbs", "start"), "stop": ("engine.verbs", "stop"),
    "restart": ("engine.verbs", "restart"), "kill": ("engine.verbs", "kill"), "pause": ("engine.verbs", "pause"),
    "unpause": ("engine.verbs", "unpause"), "rm": ("engine.verbs", "remove"), "exec": ("engine.verbs", "exec_run"),
    "ps": ("engine.verbs", "ps"), "logs": ("engine.verbs", "logs"), "wait": ("engine.verbs", "wait"),
    "inspect": ("engine.containers", "inspect_container"),
    "commit": ("engine.verbs", "commit"),
    # images from a Dockerfile: build(context, tag=...), and the steps that made an image
    "build": ("engine.build", "build"), "history": ("engine.images", "image_history"),
    "Trace": ("trace", "Trace"), "Step": ("trace", "Step"),
    # Back and Next through a Trace, or through a live Sandbox's steps (ipywidgets, with a static fallback)
    "StepPlayer": ("step_player", "StepPlayer"),
    "namespace_ids": ("kernel.namespaces", "namespace_ids"),
    # cgroups a container in a user namespace may create below its limits (the grader's containers)
    "DelegatedCgroup": ("engine.delegated_cgroup", "DelegatedCgroup"),
    "MinicontainerError": ("errors", "MinicontainerError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'minicontainer' has no attribute {name!r}")
