"""``workbench mcp`` over stdio, by hand: stdout carries protocol messages and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.mcp.client import REPO, initialize_request, stdout_lines, write_tiny_weights

CMD = [sys.executable, "-m", "workbench.cli", "mcp"]


def _line(obj: object) -> str:
    return json.dumps(obj) + "\n"


def test_stdout_holds_only_protocol_messages(tmp_path: Path) -> None:
    weights = write_tiny_weights(tmp_path / "tiny.safetensors")
    init = initialize_request()
    call = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":%s}}\n'
    # Tool calls run concurrently, so what depends on an earlier answer goes in a later batch.
    batches = [
        _line(init)
        + _line({"jsonrpc": "2.0", "method": "notifications/initialized"})
        + call % (2, "add_training_example", '{"input": "a", "weight": NaN}')
        + call % (3, "set_learning_rate", '{"learning_rate": Infinity}')
        + "this line is not JSON\n"
        + call % (4, "add_training_example", '{"input": "ok", "target": " fine"}'),
        call % (5, "force_update", "{}")
        + call % (6, "generate", '{"prompt": "hi", "max_new_tokens": 3}')
        + _line({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
    ]
    # A client keeps stdin open until it has its answers (end of input ends the session), so
    # the answers are read first; then closing stdin must end the server cleanly.
    proc = subprocess.Popen(
        [*CMD, "--root", str(tmp_path), "--weights", str(weights)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = b""
    seen: set[int] = set()
    for batch, last_id in zip(batches, (4, 7), strict=True):
        proc.stdin.write(batch.encode())
        proc.stdin.flush()
        while not set(range(1, last_id + 1)) <= seen:
            line = proc.stdout.readline()  # the session-wide pytest timeout bounds this
            assert line, f"the server stopped early: {proc.communicate(timeout=30)[1].decode()}"
            out += line
            seen.add(json.loads(line).get("id", 0))
    rest, err = proc.communicate(timeout=60)  # closes stdin: end of input
    assert proc.returncode == 0, err.decode()
    proc_stdout, proc_stderr = out + rest, err
    messages = stdout_lines(proc_stdout)  # raises on any line that is not JSON-RPC
    answers = {m["id"]: m for m in messages if "id" in m}
    assert answers[1]["result"]["serverInfo"]["name"] == "markovian-workbench"
    assert answers[2]["result"]["isError"] is True
    assert answers[3]["result"]["isError"] is True
    assert answers[4]["result"]["isError"] is False
    assert answers[4]["result"]["structuredContent"]["stats"]["total_examples"] == 1
    assert answers[5]["result"]["isError"] is False
    assert answers[6]["result"]["isError"] is False
    assert len(answers[7]["result"]["tools"]) == 10
    assert b"serving over stdio" in proc_stderr
    # the learner closed cleanly at end of input: a final checkpoint of its one update
    assert list((tmp_path / ".workbench-session" / "checkpoints").glob("ckpt-*.mwb"))


def test_bad_weights_fail_before_serving_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    proc = subprocess.run(
        [*CMD, "--root", str(tmp_path), "--weights", str(tmp_path / "bad.safetensors")],
        input=b"",
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"cannot start" in proc.stderr


@pytest.mark.parametrize("args", [["--root", "/no/such/folder"], ["--http", "nonsense"]])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str]) -> None:
    full = args if args[0] == "--root" else ["--root", str(tmp_path), *args]
    proc = subprocess.run([*CMD, *full], capture_output=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert b"workbench mcp:" in proc.stderr


def test_stdout_to_stderr_catches_prints_c_writes_and_children() -> None:
    code = textwrap.dedent(
        """
        import os, subprocess, sys
        from workbench.mcp.server import stdout_to_stderr
        with stdout_to_stderr():
            print("python print")
            os.write(1, b"raw fd write\\n")
            subprocess.run([sys.executable, "-c", "print('child')"], check=True)
        print("after")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60, check=True
    )
    assert proc.stdout == b"after\n"
    for text in (b"python print", b"raw fd write", b"child"):
        assert text in proc.stderr
