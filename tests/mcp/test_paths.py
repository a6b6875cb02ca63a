"""The path guard on its own: every way out of the root is refused, every way in is allowed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.formats.safetensors_io import write_safetensors
from workbench.mcp.paths import (
    PathRefused,
    resolve_for_read,
    resolve_for_write,
    resolve_inside,
)


def _make_tree(top: Path) -> Path:
    """root/ (with sub/, a link out, a link in) beside root-sibling/ (same prefix) and outside/."""
    root = top / "root"
    (root / "sub").mkdir(parents=True)
    (root / "w.bin").write_bytes(b"x")
    (top / "root-sibling").mkdir()
    (top / "outside").mkdir()
    (top / "outside" / "secret").write_text("s")
    (root / "link-out").symlink_to(top / "outside")
    (root / "file-out").symlink_to(top / "outside" / "secret")
    (root / "link-in").symlink_to(root / "sub")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _make_tree(tmp_path)


@pytest.mark.parametrize(
    "path",
    [
        "../outside/secret",
        "sub/../../outside",
        "..",
        "/etc/passwd",
        "/",
        "link-out/secret",
        "link-out",
        "file-out",
        "../root-sibling/x",
        "a\x00b",
        "",
        "x" * 5000,
    ],
)
def test_refuses_ways_out(tree: Path, path: str) -> None:
    with pytest.raises(PathRefused):
        resolve_inside(tree, path)


def test_refuses_a_sibling_that_shares_the_prefix_given_absolute(tree: Path) -> None:
    sibling = str(tree) + "-sibling/w.bin"  # a string prefix check would let this through
    with pytest.raises(PathRefused, match="outside the allowed folder"):
        resolve_inside(tree, sibling)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("w.bin", "w.bin"),
        ("./sub/../w.bin", "w.bin"),
        ("sub/new.mwb", "sub/new.mwb"),
        ("link-in/x.mwb", "sub/x.mwb"),
        ("sub//x", "sub/x"),
    ],
)
def test_allows_ways_in_and_returns_the_resolved_path(tree: Path, path: str, expected: str) -> None:
    assert resolve_inside(tree, path) == tree.resolve() / expected


def test_absolute_path_inside_is_allowed(tree: Path) -> None:
    assert resolve_inside(tree, str(tree / "w.bin")) == tree.resolve() / "w.bin"


def test_root_reached_through_a_symlink_still_works(tree: Path) -> None:
    alias = tree.parent / "alias"
    alias.symlink_to(tree)
    assert resolve_inside(alias, "w.bin") == tree.resolve() / "w.bin"
    with pytest.raises(PathRefused):
        resolve_inside(alias, "../outside/secret")


def test_symlink_loop_is_refused_or_stays_inside(tree: Path) -> None:
    (tree / "loop").symlink_to(tree / "loop")
    try:
        got = resolve_inside(tree, "loop/x")
    except PathRefused:
        return
    assert got.is_relative_to(tree.resolve())


def test_write_refuses_the_root_a_folder_and_the_session(tree: Path) -> None:
    session = tree / ".workbench-session"
    session.mkdir()
    for path in (".", "sub", ".workbench-session/examples.sqlite", ".workbench-session/x/y"):
        with pytest.raises(PathRefused):
            resolve_for_write(tree, path, protected=[session])
    assert resolve_for_write(tree, "sub/ok.mwb", protected=[session]) == tree / "sub" / "ok.mwb"


def test_read_refuses_companions_that_lead_out(tree: Path) -> None:
    # A raw-binary manifest and a config.json beside the weights are read too.
    (tree / "w.bin.json").symlink_to(tree.parent / "outside" / "secret")
    with pytest.raises(PathRefused, match=r"w\.bin\.json"):
        resolve_for_read(tree, "w.bin")
    (tree / "sub" / "config.json").symlink_to(tree.parent / "outside" / "secret")
    with pytest.raises(PathRefused, match=r"config\.json"):
        resolve_for_read(tree, "sub/model.safetensors")
    # A folder brings its config.json too.
    with pytest.raises(PathRefused):
        resolve_for_read(tree, "sub")


def test_read_refuses_a_data_file_that_leads_out_of_its_manifest(tree: Path) -> None:
    # Given the manifest, the reader opens the data file beside it.
    (tree / "m.bin.json").write_text('{"format": "markovian-workbench/raw-binary"}')
    (tree / "m.bin").symlink_to(tree.parent / "outside" / "secret")
    with pytest.raises(PathRefused, match=r"would read m\.bin,"):
        resolve_for_read(tree, "m.bin.json")


def test_read_refuses_a_shard_that_leads_out(tree: Path) -> None:
    folder = tree / "sharded"
    folder.mkdir()
    index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-1.safetensors").write_bytes(b"x")
    (folder / "model-2.safetensors").symlink_to(tree.parent / "outside" / "secret")
    for path in ("sharded", "sharded/model.safetensors.index.json"):
        with pytest.raises(PathRefused, match=r"model-2\.safetensors"):
            resolve_for_read(tree, path)


def test_read_judges_only_what_the_load_opens(tree: Path) -> None:
    # Links out that no reader opens for a GGUF file do not block its load ...
    secret = tree.parent / "outside" / "secret"
    (tree / "sub" / "m.gguf").write_bytes(b"GGUF" + bytes(20))
    (tree / "sub" / "config.json").symlink_to(secret)
    (tree / "sub" / "m.gguf.json").symlink_to(secret)
    assert resolve_for_read(tree, "sub/m.gguf") == tree.resolve() / "sub" / "m.gguf"
    # ... but the format a load is given counts: as raw binary, m.st would bring m.st.json.
    write_safetensors(tree / "m.st", {"w": torch.ones(1)})
    (tree / "m.st.json").symlink_to(secret)
    assert resolve_for_read(tree, "m.st") == tree.resolve() / "m.st"
    with pytest.raises(PathRefused, match=r"m\.st\.json"):
        resolve_for_read(tree, "m.st", "binary")


_PARTS = st.sampled_from(
    ["..", ".", "", "sub", "link-out", "link-in", "file-out", "w.bin", "secret", "root-sibling"]
)
_PATHS = st.one_of(
    st.lists(_PARTS, min_size=1, max_size=6).map("/".join),
    st.lists(_PARTS, min_size=1, max_size=6).map(lambda p: "/" + "/".join(p)),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(path=_PATHS)
def test_fuzz_result_is_always_inside_or_refused(
    tmp_path_factory: pytest.TempPathFactory, path: str
) -> None:
    root = _fuzz_tree(tmp_path_factory)
    try:
        got = resolve_inside(root, path)
    except PathRefused:
        return
    base = Path(os.path.realpath(root))
    assert got.is_relative_to(base)
    assert "\x00" not in path
    # The independent oracle: the kernel's own view, by resolving the text again.
    assert os.path.commonpath([os.path.realpath(base / path), base]) == str(base)


_TREES: dict[str, Path] = {}


def _fuzz_tree(factory: pytest.TempPathFactory) -> Path:
    """One shared tree for all hypothesis examples (hypothesis reuses the test's fixtures)."""
    if "root" not in _TREES:
        _TREES["root"] = _make_tree(factory.mktemp("fuzz"))
    return _TREES["root"]
