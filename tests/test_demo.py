from __future__ import annotations

from workbench.cli import main
from workbench.demo import demo


def test_demo_shows_learning() -> None:
    result = demo(examples=240, n_facts=4, quiet=True)
    assert result.updates == 60
    assert result.loss_after < 0.5 * result.loss_before
    assert result.latency_idle_ms > 0 and result.latency_learning_ms > 0


def test_cli_demo_runs(capsys) -> None:
    assert main(["demo", "--examples", "40", "--facts", "2"]) == 0
    err = capsys.readouterr().err
    assert "before: loss" in err and "after 10 updates" in err and "latency" in err
