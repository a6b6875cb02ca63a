"""An agent loads and saves through a folder that keeps turning into a link out of the root.

A thread swaps ``root/box`` between a real folder and a link to a folder outside, while the
agent (the SDK's client, over stdio and HTTP) loads ``box/w.safetensors`` and saves
``box/new.safetensors`` a thousand times each. Outside sit weights of another architecture under
the very name loaded and a canary under the name saved. Nothing outside may be read or written
(the kernel's inotify sees no access at all; canaries keep their bytes and mtimes), every refusal
is a tool error that says what happened, and the server keeps answering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.formats.race import Swapper, Watch, snapshot
from tests.learner.helpers import make_learner
from tests.mcp.client import SyncClient, text_of, write_tiny_weights
from workbench.formats import save_weights
from workbench.mcp import serve_http
from workbench.models import ModelConfig, Transformer

ROUNDS = 1000  # loads, and as many saves
BATCH = 50  # calls sent together, without awaiting each
CLEAR = re.compile(
    r"outside the allowed folder|leads out of its folder|climbs out|does not exist"
    r"|No such file|is missing|cannot write|cannot read"
)


@dataclass
class Tree:
    root: Path
    outside: Path
    parameters: int  # of the weights inside; the ones outside have another architecture


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "box").mkdir(parents=True)
    outside.mkdir()
    write_tiny_weights(root / "box" / "w.safetensors")
    save_weights(
        Transformer(ModelConfig.preset("tiny-gpt2")), outside / "w.safetensors", "safetensors"
    )
    (outside / "new.safetensors").write_bytes(b"canary: never replaced")
    parameters = Transformer(ModelConfig.preset("tiny-llama")).num_parameters()
    return Tree(root, outside, parameters)


def _race(client: SyncClient, tree: Tree) -> None:
    canaries = snapshot(tree.outside)
    client.ok("disable_learning")
    results: list[tuple[str, Any]] = []
    with Watch(tree.outside) as watch:
        swapper = Swapper(tree.root, "box", tree.outside)
        swapper.start()
        try:
            for _ in range(ROUNDS // (BATCH // 2)):
                calls: list[tuple[str, dict[str, Any]]] = []
                for _ in range(BATCH // 2):
                    calls.append(("load_weights", {"file_path": "box/w.safetensors"}))
                    calls.append(
                        (
                            "save_weights",
                            {"file_path": "box/new.safetensors", "format": "safetensors"},
                        )
                    )
                answers = client.call_many(calls)
                results += [(name, a) for (name, _), a in zip(calls, answers, strict=True)]
        finally:
            flips = swapper.stop()
        events = watch.close()
    assert events == [], f"the folder outside the root was touched: {events[:10]}"
    assert snapshot(tree.outside) == canaries

    counts = {"load_weights": 0, "save_weights": 0}
    unclear, refused = [], 0
    for name, answer in results:
        if answer.is_error:
            refused += 1
            if not CLEAR.search(text_of(answer)):
                unclear.append(f"{name}: {text_of(answer)}")
            assert "/proc/self/fd" not in text_of(answer), text_of(answer)
            continue
        counts[name] += 1
        if name == "load_weights":  # the weights inside, never the other architecture outside
            message = answer.structured_content["message"]
            assert f"({tree.parameters:,} parameters)" in message, message
    assert not unclear, unclear[:5]
    assert flips > 50, flips
    assert counts["load_weights"] > 0 and counts["save_weights"] > 0, counts
    assert refused > 0, "the swapper never won a race: nothing was tested"
    # The server is up and the path works again once nobody swaps it.
    assert client.ok("load_weights", {"file_path": "box/w.safetensors"})["format"] == "safetensors"
    client.ok("save_weights", {"file_path": "box/new.safetensors", "format": "safetensors"})
    client.ok("get_learning_stats")


@pytest.mark.slow
def test_racing_swapper_over_stdio(tree: Tree) -> None:
    client = SyncClient.stdio(tree.root)
    try:
        _race(client, tree)
    finally:
        client.close()


@pytest.mark.slow
def test_racing_swapper_over_http(tree: Tree, tmp_path: Path) -> None:
    with (
        make_learner(tmp_path / "session") as learner,
        serve_http(learner, root=tree.root) as handle,
    ):
        client = SyncClient.http(handle.url, handle.token)
        try:
            _race(client, tree)
        finally:
            client.close()


class SwapsFirst:
    """The learner, except that it swaps ``box`` for the link out just before a load or save.

    That is the race's worst moment on demand: the guard has passed the path, then the folder
    becomes a link, then the learner opens it.
    """

    def __init__(self, learner: Any, tree: Tree) -> None:
        self._learner, self._tree = learner, tree

    def __getattr__(self, name: str) -> Any:
        return getattr(self._learner, name)

    def _swap(self) -> None:
        box = self._tree.root / "box"
        if not box.is_symlink():
            box.rename(self._tree.root / "real")
            box.symlink_to(self._tree.outside)

    def load_weights(self, path: Any, format: Any = None) -> Any:
        self._swap()
        return self._learner.load_weights(path, format)

    def save_weights(self, path: Any, format: str = "custom", dtype: Any = None) -> Any:
        self._swap()
        return self._learner.save_weights(path, format, dtype)


def test_a_link_swapped_in_after_the_guard_is_refused_by_the_reader(
    tree: Tree, tmp_path: Path
) -> None:
    with (
        make_learner(tmp_path / "session") as learner,
        serve_http(SwapsFirst(learner, tree), root=tree.root) as handle,  # type: ignore[arg-type]
    ):
        client = SyncClient.http(handle.url, handle.token)
        try:
            with Watch(tree.outside) as watch:
                for name, args in (
                    ("load_weights", {"file_path": "box/w.safetensors"}),
                    ("save_weights", {"file_path": "box/new.safetensors", "format": "safetensors"}),
                ):
                    message = client.error(name, args)
                    assert "box/new.safetensors" in message or "box/w.safetensors" in message
                    assert "passes through box, a link that leads out of its folder" in message
                    assert "/proc/self/fd" not in message, message
                    (tree.root / "box").unlink()
                    (tree.root / "real").rename(tree.root / "box")
                events = watch.close()
            client.ok("get_learning_stats")
        finally:
            client.close()
    assert events == []
