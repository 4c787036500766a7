"""The lifecycle state machine: every allowed transition, and every refused one with its way out."""
from __future__ import annotations

import pytest

from minicontainer.engine.lifecycle import REFUSALS, STATES, TRANSITIONS, VERBS, transition
from minicontainer.errors import StateError

LIVE_STATES = [s for s in STATES if s != "removed"]


@pytest.mark.parametrize("verb, state", sorted(TRANSITIONS))
def test_every_allowed_transition_leads_where_the_table_says(verb, state):
    assert transition("web", state, verb) == TRANSITIONS[(verb, state)]


@pytest.mark.parametrize("verb, state", sorted(REFUSALS))
def test_every_refused_transition_names_the_state_and_the_way_out(verb, state):
    with pytest.raises(StateError) as info:
        transition("web", state, verb)
    message = str(info.value)
    assert message.startswith("container web is ") and "\n" not in message
    # the message says where the container is, in the words ps uses
    assert any(word in message for word in ("paused", "running", "not running", "not paused"))


def test_every_user_verb_has_an_answer_for_every_state():
    for verb in VERBS:
        if verb == "exit":   # not a verb: PID 1 ending, which can only happen to a live process
            continue
        for state in LIVE_STATES:
            assert ((verb, state) in TRANSITIONS) != ((verb, state) in REFUSALS), (verb, state)


def test_the_messages_docker_users_expect():
    with pytest.raises(StateError, match="^container web is paused: unpause it first$"):
        transition("web", "paused", "exec")
    with pytest.raises(StateError, match="^container web is not running: start it first$"):
        transition("web", "exited", "exec")
    with pytest.raises(StateError, match="rm -f"):
        transition("web", "running", "rm")


def test_a_removed_container_takes_no_verb_and_unknown_names_are_programming_errors():
    for verb in VERBS:
        with pytest.raises(StateError, match="has been removed"):
            transition("web", "removed", verb)
    with pytest.raises(ValueError):
        transition("web", "running", "teleport")
    with pytest.raises(ValueError):
        transition("web", "sleeping", "start")


def test_exit_only_ends_a_live_process():
    assert transition("web", "running", "exit") == "exited"
    assert transition("web", "paused", "exit") == "exited"
