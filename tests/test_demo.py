"""The terminal demo and the ``workbench`` command line (no JupyterLab server is started)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from workbench import cli
from workbench.cli import JUPYTER_CONFIG, KERNEL_NAME, lab_command, main, parse_args
from workbench.demo import run_demo


def test_demo_shows_learning() -> None:
    result = run_demo(examples=240, n_facts=4, quiet=True)
    assert result.updates == 60
    assert result.loss_after < 0.5 * result.loss_before
    assert result.latency_idle_ms > 0 and result.latency_learning_ms > 0


def test_cli_demo_runs(capsys) -> None:
    assert main(["demo", "--examples", "40", "--facts", "2"]) == 0
    err = capsys.readouterr().err
    assert "before: loss" in err and "after 10 updates" in err and "latency" in err


# ----------------------------------------------------------------- `workbench lab`
def test_lab_passes_unknown_options_to_jupyterlab() -> None:
    args = parse_args(
        ["lab", "--ServerApp.token=abc", "--allow-root", "--port", "9999", "--no-browser", "x"]
    )
    assert (args.port, args.no_browser, args.dir) == (9999, True, None)
    assert args.extra == ["--ServerApp.token=abc", "--allow-root", "x"]
    assert parse_args(["lab"]).extra == []
    # ours are not abbreviated: "--no" and "--po" belong to JupyterLab
    assert parse_args(["lab", "--no", "--po=1"]).extra == ["--no", "--po=1"]


def test_other_commands_still_refuse_unknown_options(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--allow-root"])
    assert info.value.code == 2
    assert "unrecognized arguments: --allow-root" in capsys.readouterr().err
    assert parse_args(["bench", "optim", "--repeats", "3"]).extra == ["--repeats", "3"]


def test_lab_command_line(tmp_path: Path) -> None:
    cmd, env = lab_command(
        tmp_path,
        ["--ServerApp.token=abc", "--allow-root"],
        port=8899,
        no_browser=True,
        environ={"JUPYTER_CONFIG_PATH": "/elsewhere", "HOME": "/home/x"},
    )
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert cmd[3:] == [
        f"--ServerApp.root_dir={tmp_path}",
        f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
        "--no-browser",
        "--port=8899",
        "--ServerApp.token=abc",  # the person's options last: they override ours
        "--allow-root",
    ]
    assert env["JUPYTER_CONFIG_PATH"] == os.pathsep.join([str(JUPYTER_CONFIG), "/elsewhere"])
    assert env["HOME"] == "/home/x"
    cmd, env = lab_command(tmp_path, kernel=None, environ={})
    assert not any("default_kernel_name" in c for c in cmd)
    assert env == {"JUPYTER_CONFIG_PATH": str(JUPYTER_CONFIG)}


def test_lab_settings_turn_off_the_news_prompt() -> None:
    """The shipped override is valid for the installed JupyterLab's notification schema."""
    overrides = json.loads(
        (JUPYTER_CONFIG / "labconfig" / "default_setting_overrides.json").read_text()
    )
    setting = overrides["@jupyterlab/apputils-extension:notification"]
    assert setting == {"fetchNews": "false", "checkForUpdates": False}
    from jupyterlab.commands import get_app_dir

    schema = json.loads(
        (
            Path(get_app_dir()) / "schemas/@jupyterlab/apputils-extension/notification.json"
        ).read_text()
    )["properties"]
    assert setting["fetchNews"] in [c["const"] for c in schema["fetchNews"]["oneOf"]]
    assert schema["checkForUpdates"]["type"] == "boolean"


def test_cmd_lab_runs_jupyterlab_with_the_options(monkeypatch, capsys, tmp_path: Path) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.setattr(cli, "_kernel_installed", lambda name: True)
    assert main(["lab", "--dir", str(tmp_path), "--ServerApp.token=abc", "--allow-root"]) == 0
    ((cmd, env),) = calls
    assert cmd[-2:] == ["--ServerApp.token=abc", "--allow-root"]
    assert f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}" in cmd
    assert env["JUPYTER_CONFIG_PATH"].split(os.pathsep)[0] == str(JUPYTER_CONFIG)

    monkeypatch.setattr(cli, "_kernel_installed", lambda name: False)
    assert main(["lab", "--dir", str(tmp_path)]) == 0
    assert not any("default_kernel_name" in c for c in calls[-1][0])
    assert f"-m ipykernel install --sys-prefix --name {KERNEL_NAME}" in capsys.readouterr().err
