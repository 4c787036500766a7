"""The container lifecycle (生命周期) as a state machine: which verb may move a container where.

    create ──► created ──start──► running ──pause──► paused
                  ▲                │  ▲   ◄──unpause──  │
                  │                │  └──── start ───┐   │
                  │        stop / kill / exit        │   │ stop / kill
                  │                ▼                 │   ▼
                  └───────────  exited  ◄────────────┴───┘
                                   │ rm (rm -f from any state)
                                   ▼
                                removed

Every verb asks :func:`transition` first. It answers with the state the verb leads to, or
refuses with a message that names the state and the way out, as Docker's errors do. The
table is the single place where the rules live; the verbs only carry them out.
"""
from __future__ import annotations

from ..errors import StateError

STATES = ("created", "running", "paused", "exited", "removed")

# (verb, from state) -> to state. A verb on a state missing here is refused by REFUSALS.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("start", "created"): "running",
    ("start", "exited"): "running",     # the same upper dir: the container's files are kept
    ("start", "running"): "running",    # docker start of a running container does nothing
    ("restart", "created"): "running",
    ("restart", "running"): "running",
    ("restart", "paused"): "running",
    ("restart", "exited"): "running",
    ("stop", "running"): "exited",
    ("stop", "paused"): "exited",       # thawed, then stopped, as docker does
    ("stop", "created"): "created",     # nothing to stop
    ("stop", "exited"): "exited",
    ("kill", "running"): "exited",
    ("kill", "paused"): "exited",
    ("exit", "running"): "exited",      # not a verb: the container's PID 1 ended
    ("exit", "paused"): "exited",
    ("pause", "running"): "paused",
    ("unpause", "paused"): "running",
    ("exec", "running"): "running",
    ("attach", "running"): "running",
    ("rm", "created"): "removed",
    ("rm", "exited"): "removed",
    ("rm -f", "created"): "removed",
    ("rm -f", "running"): "removed",    # killed first
    ("rm -f", "paused"): "removed",
    ("rm -f", "exited"): "removed",
}

# (verb, from state) -> why not, and what to do instead
REFUSALS: dict[tuple[str, str], str] = {
    ("start", "paused"): "is paused: unpause it instead",
    ("kill", "created"): "is not running",
    ("kill", "exited"): "is not running",
    ("pause", "created"): "is not running: start it first",
    ("pause", "exited"): "is not running: start it first",
    ("pause", "paused"): "is already paused",
    ("unpause", "created"): "is not paused",
    ("unpause", "running"): "is not paused",
    ("unpause", "exited"): "is not paused",
    ("exec", "created"): "is not running: start it first",
    ("exec", "exited"): "is not running: start it first",
    ("exec", "paused"): "is paused: unpause it first",
    ("attach", "created"): "is not running: start it first",
    ("attach", "exited"): "is not running: start it with `start -a` to see its output",
    ("attach", "paused"): "is paused: unpause it first",
    ("rm", "running"): "is running: stop it first, or remove it with rm -f",
    ("rm", "paused"): "is paused: unpause and stop it first, or remove it with rm -f",
}
VERBS = sorted({verb for verb, _ in TRANSITIONS} | {verb for verb, _ in REFUSALS})


def transition(name: str, state: str, verb: str) -> str:
    """The state ``verb`` takes container ``name`` to from ``state``, or a StateError saying why not."""
    if state not in STATES:
        raise ValueError(f"unknown container state {state!r}")
    if state == "removed":
        raise StateError(f"container {name} has been removed")
    if (verb, state) in TRANSITIONS:
        return TRANSITIONS[(verb, state)]
    if (verb, state) in REFUSALS:
        raise StateError(f"container {name} {REFUSALS[(verb, state)]}")
    if verb in VERBS:
        raise ValueError(f"{verb!r} can't happen to a {state} container")   # "exit" of a process never started
    raise ValueError(f"unknown container verb {verb!r}")
