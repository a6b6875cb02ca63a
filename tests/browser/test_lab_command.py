"""``workbench lab`` for real: the server its command line starts, asked through its REST API.

No browser: the settings JupyterLab would apply (``/lab/api/settings``) and the default kernel
(``/api/kernelspecs``) are what the page reads at start.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from workbench.cli import KERNEL_NAME, lab_command

from .conftest import Server, free_port, jupyter_env, running_jupyter, server_options

pytestmark = [pytest.mark.slow]


def test_workbench_lab_has_no_news_prompt_and_our_kernel(tmp_path: Path) -> None:
    if KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        pytest.skip(f"no {KERNEL_NAME!r} kernel: run scripts/setup.sh")
    root = tmp_path / "root"
    root.mkdir()
    token, port = secrets.token_hex(16), free_port()
    cmd, env = lab_command(
        root, server_options(token, port), environ=jupyter_env(tmp_path, settings={})
    )
    server = Server(f"http://127.0.0.1:{port}", token, root, tmp_path / "server.log")
    with running_jupyter(cmd, env, server):
        plugin = server.request(
            "GET", "lab/api/settings/@jupyterlab/apputils-extension:notification"
        )
        defaults = {k: v.get("default") for k, v in plugin["schema"]["properties"].items()}
        # "none" would ask "Would you like to get notified about official Jupyter news?"
        assert defaults["fetchNews"] == "false"
        assert defaults["checkForUpdates"] is False
        assert plugin["settings"] == {}  # a default, so a person's own setting still wins
        specs = server.api("GET", "kernelspecs")
        assert specs["default"] == KERNEL_NAME
        assert KERNEL_NAME in specs["kernelspecs"]
        # a new notebook's kernel: what JupyterLab starts when no name is given
        kernel = server.api("POST", "kernels", {})
        assert kernel["name"] == KERNEL_NAME
        server.api("DELETE", f"kernels/{kernel['id']}")
