"""The course as a student meets it: every notebook run in JupyterLab in a real browser.

Each notebook is opened in JupyterLab in Debian's chromium, run with Run All Cells, and read
back from the page: no cell may show an error, and every trace table (``.mc-trace``) and
step player (``.mc-player``) must fit the output area it is drawn in, measured in the DOM
at a 1,280 px wide window, with its cells left-aligned. The exam-prep quiz is answered with
the mouse, in English and in Chinese. Screenshots of each notebook go to browser-artifacts/.
The last test shows that these checks fail on a notebook that should fail them.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from grading.quiz import UI
from lab_page import (VIEWPORT, BrowserReport, Measured, cell_problems, cells, measure, open_notebook, run_all,
                      toggle_file_browser)
from lab_server import NOTEBOOKS, LabServer
from notebook_checks import LEFTOVER_GRACE, processes_in_session

MEASURED = (".mc-trace", ".mc-player")
TILE_HEIGHT = 4000        # px of notebook per screenshot: a whole notebook, in a few images
MAX_SHOT_HEIGHT = 12000   # px: a taller output is cut (Chromium's captures stop at 16,384 px)
CJK = re.compile(r"[\u4e00-\u9fff]")


def leftovers_of(kernel_pids: list[int]) -> list[int]:
    """Processes still running in the kernels' sessions (jupyter_client starts each kernel in its
    own session, and everything a notebook starts stays in it), after a grace period."""
    deadline = time.monotonic() + LEFTOVER_GRACE
    while True:
        left = sorted(p for k in kernel_pids for p in processes_in_session(k) if p != k)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def measure_all(page, notebook: str, layout: str) -> list[Measured]:
    return [m for selector in MEASURED for m in measure(page, notebook, selector, layout)]


def screenshot_notebook(page, folder: Path) -> int:
    """The whole notebook, top to bottom, in tiles of TILE_HEIGHT px; returns how many."""
    scroller = ".jp-NotebookPanel .jp-WindowedPanel-outer"
    total = page.evaluate(f"() => document.querySelector('{scroller}').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": TILE_HEIGHT})
    tiles = 0
    try:
        for top in range(0, total, TILE_HEIGHT - 200):     # overlap a little, so no line is cut in two
            page.evaluate(f"() => {{ document.querySelector('{scroller}').scrollTop = {top}; }}")
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            tiles += 1
            page.screenshot(path=folder / f"page-{tiles:02d}.png")
            if top + TILE_HEIGHT >= total:
                break
    finally:
        page.set_viewport_size(VIEWPORT)
    return tiles


def screenshot_whole(page, element, path: Path) -> bool:
    """A picture of one rendered element, all of it; False if it is not displayed.

    The notebook scrolls inside JupyterLab's panel, not the page, so an element taller than
    the window would be cut: the window is made tall enough to hold it while it is taken."""
    box = element.bounding_box()
    if box is None:
        return False
    page.set_viewport_size({"width": VIEWPORT["width"],
                            "height": min(MAX_SHOT_HEIGHT, max(VIEWPORT["height"], int(box["height"]) + 300))})
    try:
        element.scroll_into_view_if_needed()
        element.screenshot(path=path)
    finally:
        page.set_viewport_size(VIEWPORT)
    return True


def screenshot_outputs(page, folder: Path, selector: str) -> int:
    """One image per rendered element matching ``selector`` (a trace table, a step player)."""
    return sum(screenshot_whole(page, element, folder / f"{selector.strip('.')}-{i + 1:02d}.png")
               for i, element in enumerate(page.locator(f".jp-NotebookPanel {selector}").all()))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_all_in_jupyterlab_with_no_error_and_its_traces_fit_the_output_area_left_aligned(
        notebook: Path, lab: LabServer, page, artifacts: Path, report: BrowserReport):
    started = time.monotonic()
    open_notebook(page, lab.lab_url(notebook.name))
    opened = time.monotonic()
    run_all(page)
    report.seconds[notebook.stem] = (opened - started, time.monotonic() - opened)
    problems = cell_problems(notebook.stem, cells(page))

    # JupyterLab opens with its file browser on the left (a ~850 px output area); a student
    # who closes it gets ~1,100 px. The traces must fit both ways.
    measured = measure_all(page, notebook.stem, "open")
    folder = artifacts / notebook.stem
    folder.mkdir()
    report.screenshots += screenshot_notebook(page, folder)
    for selector in MEASURED:
        report.screenshots += screenshot_outputs(page, folder, selector)
    print(f"screenshots of {notebook.name} in {folder}")
    toggle_file_browser(page)
    measured += measure_all(page, notebook.stem, "closed")
    report.measured += measured
    for m in measured:
        print(f"{m.ratio:.3f}  {m}")

    left = leftovers_of(lab.kernel_pids())
    lab.shut_down_kernels()
    failures = []
    if problems:
        failures.append("cells that fail in JupyterLab:\n" + "\n".join(problems))
    too_wide = [m for m in measured if not m.fits]
    if too_wide:
        failures.append("wider than their output area, so the student must scroll sideways:\n"
                        + "\n".join(map(str, too_wide)))
    right_aligned = [f"{m.notebook} cell {m.cell} ({m.cell_id}) {m.selector}: {m.not_left} cells"
                     for m in measured if m.not_left and m.layout == "open"]
    if right_aligned:
        failures.append("table cells the page does not align left (JupyterLab's output style "
                        "':not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td' right-aligns them; a rule "
                        "scoped to the table must be more specific):\n" + "\n".join(right_aligned))
    typeset = [f"{m.notebook} cell {m.cell} ({m.cell_id}) {m.selector}: {m.math}"
               for m in measured if m.math and m.layout == "open"]
    if typeset:
        failures.append("text that JupyterLab's MathJax typeset as formulas (it was between two $ signs, as in "
                        "'$ echo $$'): give the root element the class mathjax_ignore, or put the text in "
                        "<code>:\n" + "\n".join(typeset))
    if left:
        failures.append(f"{notebook.name} left processes running after Run All: {left}")
    assert not failures, "\n\n".join(failures)


EXAM_PREP = next((p for p in NOTEBOOKS if p.name.endswith("-exam-prep.ipynb")), None)


def quiz_widget(page, constructor: str):
    """The quiz widget shown by the notebook cell whose code contains ``constructor``."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").filter(has_text=constructor).first
    quiz = cell.locator(".jp-OutputArea-output .widget-vbox").first
    quiz.wait_for()
    return quiz


def choose_first_answer(quiz) -> None:
    """Click the first choice, as a student would (or type an answer to a short question)."""
    quiz.locator(".widget-radio-box input, .widget-checkbox input, .widget-text input[type=text]").first.wait_for()
    choices = quiz.locator(".widget-radio-box input, .widget-checkbox input")
    if choices.count():
        choices.first.check()
    else:
        quiz.locator(".widget-text input[type=text]").fill("namespace")


def verdicts(lang: str) -> tuple[str, str]:
    """How the quiz says right and wrong in ``lang`` (grading.quiz.UI)."""
    return UI[lang]["correct"], UI[lang]["wrong"].split("{")[0]


@pytest.mark.skipif(EXAM_PREP is None, reason="there is no exam-prep notebook")
def test_exam_prep_quiz_answers_with_the_mouse_in_practice_and_mock_mode_in_english_and_chinese(
        lab: LabServer, page, artifacts: Path, report: BrowserReport):
    from playwright.sync_api import expect

    open_notebook(page, lab.lab_url(EXAM_PREP.name))
    run_all(page)
    folder = artifacts / "quiz"
    folder.mkdir()

    practice = quiz_widget(page, 'QuizApp(mode="practice"')

    def check(check_label: str, read_label: str) -> str:
        """Press Check; the feedback text shown under the question."""
        practice.get_by_role("button", name=check_label, exact=True).click()
        feedback = practice.locator(".widget-html", has_text=f"{read_label}:")
        feedback.wait_for()
        return feedback.inner_text()

    choose_first_answer(practice)
    english = check("Check", "Read")
    assert any(v in english for v in verdicts("en")), \
        f"after Check the practice quiz should say whether the answer is right {verdicts('en')}, but it shows: {english!r}"
    screenshot_whole(page, practice, folder / "practice-en.png")

    practice.get_by_role("button", name="中文", exact=True).click()
    question = practice.locator(".widget-html p[style*='1.1em']")
    expect(question).to_have_text(CJK)
    first_question = question.inner_text()
    practice.get_by_role("button", name="下一题", exact=True).click()
    expect(question).not_to_have_text(first_question)      # the next question's answers are drawn anew
    choose_first_answer(practice)
    chinese = check("检查", "阅读")
    assert any(v in chinese for v in verdicts("zh")), \
        f"in 中文 the feedback should say 正确/不对 {verdicts('zh')}, but it reads: {chinese!r}"
    screenshot_whole(page, practice, folder / "practice-zh.png")

    # the mock exam, in Chinese: start it, answer the first question, finish; the score,
    # its plot per topic and where the answers were saved appear
    mock = quiz_widget(page, 'QuizApp(mode="mock"')
    mock.get_by_role("button", name="中文", exact=True).click()
    mock.get_by_role("button", name="开始模拟考试", exact=True).click()
    choose_first_answer(mock)
    mock.get_by_role("button", name="交卷并保存", exact=True).click()
    mock.locator(".widget-html", has_text=UI["zh"]["score"].split("{")[0]).wait_for()
    mock.locator("img").wait_for()
    text = mock.inner_text()
    assert "答案已保存到" in text and "mock-exam-seed1-" in text, \
        f"after 交卷并保存 the mock exam should say where it saved the answers, but it shows: {text!r}"
    screenshot_whole(page, mock, folder / "mock-zh.png")
    report.screenshots += 3
    print(f"screenshots of the quiz in {folder}")
    lab.shut_down_kernels()


# A trace as it looked before issue 9: a table with no style, whose call is one unbreakable
# token, and a shell line with two $ signs outside <code>.
UNSTYLED_TRACE = ('<div class="mc-trace"><table><tr><th>step</th><th>call</th></tr><tr><td>mount_overlay</td>'
                  '<td><code>lowerdir=' + "_".join(f"{i:064x}" for i in range(12)) + '</code></td></tr>'
                  '<tr><td>cgroup_join</td><td>$ echo $$ &gt; cgroup.procs</td></tr></table></div>')


def test_the_browser_checks_catch_a_failing_cell_and_a_trace_wider_than_its_output_area(lab: LabServer, page):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[new_code_cell(f"from IPython.display import HTML\nHTML({UNSTYLED_TRACE!r})"),
                                   new_code_cell("1 / 0"), new_code_cell("print('after the error')")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, lab.served / "checks-can-fail.ipynb")
    open_notebook(page, lab.lab_url("checks-can-fail.ipynb"))
    assert run_all(page) is False, "Run All should report that a cell failed"

    problems = cell_problems("checks-can-fail", cells(page))
    assert len(problems) == 2 and "cell 1" in problems[0] and "ZeroDivisionError" in problems[0], problems
    assert problems[1].endswith("Run All never ran cells 2"), problems
    [wide] = measure(page, "checks-can-fail", ".mc-trace", "open")
    assert not wide.fits and wide.area_overflow > 0 and wide.ratio > 1, f"the unstyled trace should not fit: {wide}"
    assert wide.not_left == 6, f"JupyterLab should right-align the unstyled table's 6 cells: {wide.not_left}"
    assert wide.math == ["echo"], f"MathJax should typeset '$ echo $' as a formula: {wide.math}"
    lab.shut_down_kernels()
