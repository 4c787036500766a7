"""A throwaway JupyterLab server for the browser tests.

It listens on a free loopback port (port 0: the kernel picks one, the server writes it to
its runtime file), asks for a random token, and serves a copy of the notebooks: nothing it
runs can write into the repository. Jupyter, IPython, matplotlib and $HOME all point into
the test's own directory, and the kernels inherit the test's engine root
(MINICONTAINER_ROOT, MINICONTAINER_RUN, MINICONTAINER_CONFIG_DIR, set by tests/conftest.py),
so nothing touches /var/lib/minicontainer or the user's Jupyter settings.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The course's chapters, the notebooks a server serves (copies of)
NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]-*.ipynb"))
# Read by jupyter_core, JupyterLab, IPython and matplotlib; each gets a folder under the test's directory.
TOOL_DIRS = ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR",
             "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")
# JupyterLab's defaults that would get in the way of a measured, unattended run:
# - "none" attaches every cell to the page: the default ("contentVisibility") skips the
#   layout of cells out of view, and a table that is not laid out can't be measured;
# - the announcements plugin asks, in a toast over the notebook, whether to fetch news.
NOTEBOOK_SETTINGS = {"windowingMode": "none"}
DISABLED_PLUGINS = {"@jupyterlab/apputils-extension:announcements": True}
READY_WAIT = 300.0  # seconds: a guard against a server that never comes up (a loaded 2-core machine takes long), not a speed check
STOP_WAIT = 30.0    # seconds the server gets to shut its kernels down before it is killed


class LabServer:
    """One JupyterLab process serving ``notebooks`` (copied) from under ``home``."""

    def __init__(self, notebooks: list[Path], home: Path):
        self.home = home
        self.served = home / "notebooks"
        self.token = secrets.token_hex(24)
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.served.mkdir(parents=True)
        for path in notebooks:
            shutil.copy2(path, self.served / path.name)

    def environment(self) -> dict[str, str]:
        """This process's environment (with the test's engine root), Jupyter's folders moved under home."""
        env = dict(os.environ, HOME=str(self.home), JUPYTER_TOKEN=self.token)
        for key in TOOL_DIRS:
            env[key] = str(self.home / key.lower())
        return env

    def write_settings(self, env: dict[str, str]) -> None:
        """The user settings and page config above, in the server's own (temporary) folders."""
        tracker = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
        tracker.parent.mkdir(parents=True)
        tracker.write_text(json.dumps(NOTEBOOK_SETTINGS))
        page_config = Path(env["JUPYTER_CONFIG_DIR"]) / "labconfig" / "page_config.json"
        page_config.parent.mkdir(parents=True)
        page_config.write_text(json.dumps({"disabledExtensions": DISABLED_PLUGINS}))

    def start(self) -> str:
        """Start the server, wait until its API answers; return its base URL."""
        env = self.environment()
        self.write_settings(env)
        log = open(self.home / "jupyterlab.log", "wb")
        # --expose-app-in-browser makes window.jupyterapp, so the test can call JupyterLab's
        # own commands (notebook:run-all-cells) as the menu does; a read-only extension
        # manager never asks PyPI for extensions
        command = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser",
                   "--ip=127.0.0.1", "--port=0", "--port-retries=0", f"--ServerApp.root_dir={self.served}",
                   "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly"]
        self.process = subprocess.Popen(command, env=env, cwd=self.served, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()
        runtime = Path(env["JUPYTER_RUNTIME_DIR"])
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}: {self.log_tail()}")
            info = runtime / f"jpserver-{self.process.pid}.json"
            if info.exists():
                try:
                    self.url = json.loads(info.read_text())["url"].rstrip("/")
                    self.api("/api/status")
                    return self.url
                except (OSError, ValueError, KeyError):
                    pass   # the file is half written, or the server is not listening yet
            time.sleep(0.1)
        raise RuntimeError(f"JupyterLab did not answer within {READY_WAIT:.0f} s: {self.log_tail()}")

    def api(self, path: str, method: str = "GET") -> object:
        """Call the server's REST API with the token; the decoded JSON reply (None if empty)."""
        request = urllib.request.Request(self.url + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook: str) -> str:
        return f"{self.url}/lab/tree/{notebook}?token={self.token}"

    def kernel_pids(self) -> list[int]:
        """The pids of the server's kernels (its children running ipykernel)."""
        pids = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if self.process is not None and ppid == self.process.pid and b"ipykernel" in cmdline:
                pids.append(int(entry))
        return pids

    def shut_down_kernels(self) -> None:
        """Ask the server to shut every session's kernel down, as closing the notebook would:
        the kernel gets a shutdown request, so the notebook's atexit cleanups run."""
        for session in self.api("/api/sessions") or []:
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        """Stop the server (SIGTERM makes it shut its kernels down first), killing it if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            print(f"JupyterLab did not stop within {STOP_WAIT:.0f} s of SIGTERM, killed it; its log ends:\n"
                  + self.log_tail())
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.home / "jupyterlab.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
