"""Step and Trace: the record of every kernel-visible action, and its renderings."""
from __future__ import annotations

import json

import pytest

from minicontainer import trace
from minicontainer.trace import Step, Trace


def test_step_do_records_result_duration_and_evidence():
    with trace.recording() as tr:
        step = Step("demo", call="f()", shell="true", why="because")
        assert step.do(lambda x: x * 2, 21, evidence=lambda: {"seen": "yes"}) == 42
    assert tr.steps == [step]
    assert step.result == "42" and step.ok and step.duration >= 0
    assert step.evidence == {"seen": "yes"} and step.started > 0


def test_a_failing_step_is_recorded_and_the_error_re_raised():
    with trace.recording() as tr:
        with pytest.raises(OSError):
            Step("boom", call="g()").do(lambda: (_ for _ in ()).throw(OSError(5, "I/O error")))
    assert not tr[0].ok and "I/O error" in tr[0].error


def test_planning_records_without_doing():
    called = []
    with trace.planning() as tr:
        Step("would", call="h()").do(lambda: called.append(1))
    assert called == [] and tr[0].result == trace.PLANNED


def test_trace_renders_as_text_html_and_json_round_trip():
    tr = Trace([Step("pivot_root", call="pivot_root('.', '.')", shell="pivot_root . .", why="<swap>",
                     result="ok", evidence={"k": "v"})])
    text = tr.text()
    assert "pivot_root" in text and "$ pivot_root . ." in text and "k: v" in text
    html = tr._repr_html_()
    assert "<table>" in html and "&lt;swap&gt;" in html  # escaped
    # the style is scoped to the trace, and the table can't grow wider than its output area
    import re
    style = html[html.index("<style>") + 7:html.index("</style>")]
    selectors = [rule.split("{")[0] for rule in style.split("}") if "{" in rule]
    assert selectors and all(all(part.strip().startswith(".mc-trace") for part in sel.split(","))
                             for sel in selectors), selectors
    assert "table-layout: fixed; width: 100%" in style and "overflow-wrap: anywhere" in style
    assert not re.search(r"width:\s*\d{3,}px", html), "no fixed pixel widths that could overflow"
    again = Trace.from_json(tr.to_json())
    assert again[0] == tr[0]
    assert json.loads(tr.to_json())[0]["name"] == "pivot_root"


def test_find_names_the_missing_step():
    with pytest.raises(KeyError, match="no step named 'x'"):
        Trace([Step("a", call="a()")]).find("x")
