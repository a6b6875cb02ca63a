"""A private JupyterLab server and Debian's Chromium (through Playwright) for the browser tests.

The server runs from this venv on 127.0.0.1 with a random token, in a temporary root, with its
own settings (no news or update toasts over the screenshots) and workspaces, so a developer's
JupyterLab state neither leaks in nor gets touched. Playwright's own browser download is not
used: the tests drive the system Chromium and are skipped, saying why, when it is missing.

When a test fails, the page's screenshot and console log go to
``<pytest basetemp>/browser-artifacts/<test>/`` and the failure report names them (with the
server's log).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# JupyterLab user settings: no "fetch news?" / update notifications covering the panels.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # Start the notebook's kernel without asking ("Select Kernel" dialogs block the clicks).
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
    # The files stay as the test wrote them, so a retry's reload starts from a clean notebook.
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(
        reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)"
    )
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@dataclass
class Server:
    url: str
    token: str
    root: Path
    log: Path

    def page_url(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}?token={self.token}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the server's REST API: ``api("GET", "kernels")`` is ``GET /api/kernels``."""
        return self.request(method, f"api/{path}", body)

    def reset_workspaces(self) -> None:
        """Forget JupyterLab's saved workspaces, so no earlier test's tabs are restored."""
        for name in self.request("GET", "lab/api/workspaces")["workspaces"]["ids"]:
            self.request("DELETE", f"lab/api/workspaces/{name}")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"{self.url}/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jupyter_env(base: Path, settings: dict[str, dict[str, Any]]) -> dict[str, str]:
    """An environment whose Jupyter config, settings, workspaces and runtime live in ``base``."""
    for rel, values in settings.items():
        (base / "settings" / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / "settings" / rel).write_text(json.dumps(values))
    return {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "PYTHONUNBUFFERED": "1",
    }


def server_options(token: str, port: int) -> list[str]:
    """Loopback only, this token, this port or fail."""
    return [
        "--no-browser",
        f"--IdentityProvider.token={token}",
        "--allow-root",  # CI containers run as root; harmless otherwise
        "--ServerApp.ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
    ]


@contextmanager
def running_jupyter(
    cmd: list[str], env: dict[str, str], server: Server, timeout: float = 120.0
) -> Iterator[Server]:
    """Start ``cmd``, wait for ``server`` to answer, and shut it and its kernels down after."""
    with server.log.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its kernels are in the group we stop at the end
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited: {server.log.read_text()}")
                try:
                    server.api("GET", "status")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield server
        finally:
            try:
                server.api("POST", "shutdown")  # shuts its kernels down cleanly
                proc.wait(15)
            except Exception:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(15)


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("jupyter")
    root = base / "root"
    root.mkdir()
    env = jupyter_env(base, LAB_SETTINGS)
    token, port = secrets.token_hex(16), free_port()
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        *server_options(token, port),
        f"--ServerApp.root_dir={root}",
        # window.jupyterapp, so a test can see the notebook's kernel connection settle
        "--LabApp.expose_app_in_browser=True",
        "--JupyterNotebookApp.expose_app_in_browser=True",
    ]
    server = Server(f"http://127.0.0.1:{port}", token, root, base / "server.log")
    with running_jupyter(cmd, env, server) as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


FAILURE_ARTIFACTS = pytest.StashKey[Path]()
CONSOLE = pytest.StashKey[list[str]]()
JUPYTER_LOG = pytest.StashKey[Path]()


@pytest.fixture
def console(request: pytest.FixtureRequest) -> list[str]:
    """The page's console messages so far, ``"type: text"``, one per entry."""
    lines: list[str] = []
    request.node.stash[CONSOLE] = lines
    return lines


@pytest.fixture
def failure_artifacts(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Where this test's failure screenshot and console log go (created when first needed)."""
    folder = tmp_path_factory.getbasetemp() / "browser-artifacts" / request.node.name
    request.node.stash[FAILURE_ARTIFACTS] = folder
    return folder


@pytest.fixture
def smollm2_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The widget wait of a notebook whose setup cell loads SmolLM2 before the Workbench shows:
    3 minutes, not 1."""
    import functools

    from . import test_workbench_browser as helpers

    monkeypatch.setattr(
        helpers, "wait_for_widget", functools.partial(helpers.wait_for_widget, timeout=180)
    )


def save_page(page: Any, console: list[str], folder: Path, stem: str) -> list[str]:
    """Screenshot and console log of ``page`` as ``folder/stem.png`` and ``stem-console.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    shot, log = folder / f"{stem}.png", folder / f"{stem}-console.txt"
    log.write_text("\n".join(console) + "\n")
    try:
        page.screenshot(path=str(shot), timeout=10_000)
    except Exception as e:  # a crashed page still leaves its console log
        return [str(log), f"(no screenshot: {e})"]
    return [str(shot), str(log)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, while the page is still open, save what it showed and name the files."""
    report = yield
    page = getattr(item, "funcargs", {}).get("page")
    folder = item.stash.get(FAILURE_ARTIFACTS, None)
    if report.when == "call" and report.failed and page is not None and folder is not None:
        saved = save_page(page, item.stash.get(CONSOLE, []), folder, "failed")
        server = item.stash.get(JUPYTER_LOG, None)
        lines = saved + ([f"{server} (Jupyter server log)"] if server else [])
        report.sections.append(("browser artifacts", "\n".join(lines)))
    return report


@pytest.fixture
def page(
    browser: Any,
    console: list[str],
    failure_artifacts: Path,
    jupyter: Server,
    request: pytest.FixtureRequest,
) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    # JupyterLab asks "leave the page?" when a notebook has unsaved changes; a retry reloads.
    pg.on("dialog", lambda d: d.accept() if d.type == "beforeunload" else d.dismiss())
    request.node.stash[JUPYTER_LOG] = jupyter.log
    jupyter.reset_workspaces()  # one notebook on screen: locators find no earlier test's
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots for a person to look at (kept across runs, ignored by git)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
