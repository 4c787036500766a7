"""What the browser tests do in a JupyterLab page, through Playwright.

JupyterLab runs with ``window.jupyterapp`` exposed, so the test runs a notebook with
JupyterLab's own command (``notebook:run-all-cells``, the Run ▸ Run All Cells menu item) and
reads the cells' outputs from the notebook model that the page shows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # Playwright may be missing: the tests then skip (conftest.py) instead of failing to import
    from playwright.sync_api import Page

# A student's laptop: JupyterLab's output area is ~850 px wide with the file browser open, ~1,100 px without
VIEWPORT = {"width": 1280, "height": 900}
RUN_ALL_WAIT_MS = 600_000   # a guard against a notebook that never finishes, not a speed check
OPEN_WAIT_MS = 120_000      # JupyterLab loads, opens the notebook and starts its kernel

# True once the notebook is open and its kernel is idle.
NOTEBOOK_READY = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
                 && panel.sessionContext.session.kernel;
  return !!(panel && panel.content && panel.context.isReady && kernel && kernel.status === 'idle');
}"""

# Starts Run All; the command's promise settles when the last cell has run.
START_RUN_ALL = """() => {
  window.__mcRunAll = {done: false, ok: null, error: null};
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    ok => { window.__mcRunAll = {done: true, ok: ok, error: null}; },
    err => { window.__mcRunAll = {done: true, ok: false, error: String(err)}; });
}"""

RUN_ALL_DONE = """() => window.__mcRunAll && window.__mcRunAll.done
  && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'"""

# Every cell as the page's notebook model holds it: index, id, type, execution count, and its error outputs.
CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets.map((cell, index) => ({
  index: index, id: cell.model.id, type: cell.model.type,
  count: cell.model.type === 'code' ? cell.model.executionCount : null,
  head: cell.model.sharedModel.getSource().split('\\n')[0].slice(0, 80),
  errors: cell.model.type === 'code'
    ? cell.model.outputs.toJSON().filter(o => o.output_type === 'error')
        .map(o => ({ename: o.ename, evalue: o.evalue}))
    : []
}))"""

# Each visible element matching the selector, against the output area it is rendered in:
# the element's own box and scroll width, the area's width and whether the area scrolls sideways,
# how many of its table cells the page aligns other than left (JupyterLab's own output
# style right-aligns every td and th of an HTML output, unless a rule beats it), and how many
# pieces of its text MathJax typeset as formulas (JupyterLab typesets text between two $ signs
# in HTML outputs, outside <code> and <pre>: "$ echo $$" becomes an italic "echo").
MEASURE = """(selector) => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const found = [];
  document.querySelectorAll(selector).forEach(el => {
    if (el.getClientRects().length === 0) return;         // not displayed (a collapsed fallback)
    const area = el.closest('.jp-OutputArea-output');
    if (!area) return;
    const index = cells.findIndex(cell => cell.node.contains(el));
    const box = el.getBoundingClientRect(), areaBox = area.getBoundingClientRect();
    found.push({cell: index, id: index >= 0 ? cells[index].model.id : null,
                width: Math.max(el.scrollWidth, box.width, box.right - areaBox.left),
                overflow: el.scrollWidth - el.clientWidth,
                area_width: area.clientWidth, area_overflow: area.scrollWidth - area.clientWidth,
                not_left: Array.from(el.querySelectorAll('td, th'))
                  .filter(c => !['left', 'start'].includes(getComputedStyle(c).textAlign)).length,
                math: Array.from(el.querySelectorAll('mjx-container')).map(m => m.textContent)});
  });
  return found;
}"""


@dataclass
class Measured:
    """One rendered element and the output area that holds it, in CSS pixels."""
    notebook: str
    selector: str
    layout: str           # how JupyterLab was laid out ("file browser open" or "closed")
    cell: int
    cell_id: str
    width: float          # the element's widest extent: its box, its content, from the area's left edge
    overflow: int         # how far its content overflows its own box
    area_width: int       # the output area's width
    area_overflow: int    # how far the output area scrolls sideways
    not_left: int = 0     # table cells in it that are not left-aligned
    math: list[str] = field(default_factory=list)   # its text that MathJax typeset as formulas

    @property
    def ratio(self) -> float:
        return self.width / self.area_width if self.area_width else float("inf")

    @property
    def fits(self) -> bool:
        # one pixel of slack for sub-pixel rounding
        return self.width <= self.area_width + 1 and self.overflow <= 1 and self.area_overflow <= 1

    def __str__(self) -> str:
        return (f"{self.notebook} cell {self.cell} ({self.cell_id}) {self.selector}: {self.width:.0f} px "
                f"in a {self.area_width} px output area, file browser {self.layout} "
                f"(content overflow {self.overflow} px, area scrolls {self.area_overflow} px)")


@dataclass
class BrowserReport:
    """What a run of the browser tests measured, printed at the end of the session."""
    started: float = field(default_factory=time.monotonic)
    measured: list[Measured] = field(default_factory=list)
    screenshots: int = 0
    seconds: dict[str, tuple[float, float]] = field(default_factory=dict)   # notebook: (open, Run All)


def open_notebook(page: Page, url: str) -> None:
    """Load JupyterLab on the notebook and wait until its kernel has started and is idle."""
    page.goto(url)
    page.wait_for_function(NOTEBOOK_READY, timeout=OPEN_WAIT_MS)


def run_all(page: Page) -> bool:
    """Run All Cells, as the menu does; wait until the command is done and the kernel idle.
    False if a cell failed (JupyterLab then skips the cells after it)."""
    page.evaluate(START_RUN_ALL)
    page.wait_for_function(RUN_ALL_DONE, timeout=RUN_ALL_WAIT_MS, polling=250)
    settle(page)   # outputs that arrived last (HTML, widgets) render in the next frames
    return bool(page.evaluate("() => window.__mcRunAll.ok"))


def cells(page: Page) -> list[dict]:
    return page.evaluate(CELLS)


def cell_problems(notebook: str, cell_list: list[dict]) -> list[str]:
    """A line per cell that shows an error output, or that Run All never reached."""
    problems = []
    for cell in cell_list:
        for error in cell["errors"]:
            problems.append(f"{notebook} cell {cell['index']} ({cell['id']}: {cell['head']!r}) "
                            f"shows {error['ename']}: {error['evalue']}")
    unrun = [str(c["index"]) for c in cell_list if c["type"] == "code" and c["count"] is None and not c["errors"]]
    if unrun:
        problems.append(f"{notebook}: Run All never ran cells {', '.join(unrun)}")
    return problems


def measure(page: Page, notebook: str, selector: str, layout: str) -> list[Measured]:
    return [Measured(notebook, selector, layout, m["cell"], m["id"], m["width"], m["overflow"], m["area_width"],
                     m["area_overflow"], m["not_left"], m["math"]) for m in page.evaluate(MEASURE, selector)]


def toggle_file_browser(page: Page) -> None:
    """Open or close JupyterLab's left sidebar (View ▸ Left Sidebar), which changes the
    notebook's width, and wait until the page has been laid out again."""
    page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
    settle(page)


def settle(page: Page) -> None:
    """Wait for the fonts and two animation frames, so what was just rendered is laid out."""
    page.evaluate("() => document.fonts.ready.then(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))))")
