"""The opener: companions stay in their folder for every caller; a Folder's files stay in it.

Direct callers (no server, no guard): a shard, manifest or ``config.json`` that links out of the
folder is refused, while the path the caller names may be a link. Descriptor paths
(``Folder.path``): every component walked beneath the descriptor, links inside followed, links
out refused, writes atomic inside; under a thread that keeps swapping a folder for a link out,
the kernel sees no access at all to the files outside.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.formats.race import Swapper, Watch, snapshot
from tests.formats.test_files import shard_in_two
from workbench.formats import (
    WeightLoadError,
    companion_files,
    detect_format,
    load_model,
    load_weights,
    save_weights,
)
from workbench.formats.atomic import atomic_writer
from workbench.formats.folder import Folder
from workbench.formats.opener import LeavesFolder, is_descriptor_path, open_file
from workbench.formats.safetensors_io import write_safetensors
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

OUT = "leads out of its folder"


def _model(seed: int = 5) -> Transformer:
    return Transformer(ModelConfig.preset("tiny-llama"), seed=seed)


def _sharded(folder: Path) -> Path:
    """A Hugging Face folder with two shards and an index; returns the index."""
    single = save_weights(_model(), folder / "model.safetensors", "safetensors", hf_names=True)
    return shard_in_two(single)


# ---------------------------------------------------------------------- direct callers
def test_a_shard_linked_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    index = _sharded(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = folder / "model-00002-of-00002.safetensors"
    shutil.move(shard, elsewhere / shard.name)  # a valid shard: only the link is wrong
    shard.symlink_to(elsewhere / shard.name)
    for path in (folder, index):
        with pytest.raises(WeightLoadError, match=f"model-00002-of-00002.safetensors.*{OUT}"):
            load_weights(path)
        with pytest.raises(WeightLoadError, match=OUT):
            load_model(path)
    # A shard linked to a file inside the folder is fine.
    shard.unlink()
    shutil.move(elsewhere / shard.name, folder / "renamed.safetensors")
    shard.symlink_to("renamed.safetensors")
    assert len(load_weights(folder).tensors) == len(_model().state_dict())


def test_the_named_path_may_be_a_link(tmp_path: Path) -> None:
    store = tmp_path / "store"
    weights = save_weights(_model(), store / "blob", "safetensors")
    (tmp_path / "w.safetensors").symlink_to(weights)  # the caller's own choice
    assert detect_format(tmp_path / "w.safetensors") == "safetensors"
    assert load_weights(tmp_path / "w.safetensors").tensors


def test_a_raw_binary_pair_stays_in_its_folder(tmp_path: Path) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    save_weights(_model(), elsewhere / "m.bin", "binary")
    here.mkdir()
    # The manifest beside the data links out: refused, by detection and by the reader.
    shutil.copy(elsewhere / "m.bin", here / "m.bin")
    (here / "m.bin.json").symlink_to(elsewhere / "m.bin.json")
    with pytest.raises(WeightLoadError, match=OUT):
        load_weights(here / "m.bin")
    with pytest.raises(WeightLoadError, match=OUT):
        load_weights(here / "m.bin", "binary")
    # The data beside the manifest links out: refused.
    (here / "m.bin.json").unlink()
    shutil.copy(elsewhere / "m.bin.json", here / "m.bin.json")
    (here / "m.bin").unlink()
    (here / "m.bin").symlink_to(elsewhere / "m.bin")
    with pytest.raises(WeightLoadError, match=OUT):
        load_weights(here / "m.bin.json")


def test_a_config_json_linked_out_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    path = save_weights(_model(), elsewhere / "model.safetensors", "safetensors", hf_names=True)
    tensors = {k: v.clone() for k, v in load_weights(path).tensors.items()}
    here = tmp_path / "here"
    write_safetensors(here / "model.safetensors", tensors)  # no metadata: config.json decides
    (here / "config.json").symlink_to(elsewhere / "config.json")
    with pytest.raises(WeightLoadError, match=f"config.json is a link that {OUT}"):
        load_model(here / "model.safetensors")
    (here / "config.json").unlink()
    shutil.copy(elsewhere / "config.json", here / "config.json")
    model, _ = load_model(here / "model.safetensors")
    assert model.num_parameters() == _model().num_parameters()


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "w.safetensors")
    with pytest.raises(WeightLoadError):
        load_weights(tmp_path / "w.safetensors", "safetensors")
    with Folder(tmp_path) as folder, pytest.raises(OSError, match="not a regular file"):
        open_file(folder.path("w.safetensors"))


# ---------------------------------------------------------------------- descriptor paths
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ (sub/, a link inside, links out, weights in each format) beside outside/."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    model = _model()
    save_weights(model, root / "sub" / "m.safetensors", "safetensors")
    save_weights(model, root / "sub" / "m.gguf", "gguf", tokenizer=ByteTokenizer())
    save_weights(model, root / "sub" / "m.bin", "binary")
    save_weights(model, root / "sub" / "m.mwb", "custom")
    _sharded(root / "sharded")
    save_weights(model, outside / "m.safetensors", "safetensors")
    (root / "in").symlink_to("sub")
    (root / "in-abs").symlink_to(root / "sub")
    (root / "out").symlink_to(outside)
    (root / "up").symlink_to("../outside")
    return root


@pytest.mark.parametrize(
    "rel", ["sub/m.safetensors", "sub/m.gguf", "sub/m.bin", "sub/m.mwb", "sharded", "in/m.bin"]
)
def test_every_format_loads_through_a_folder(tree: Path, rel: str) -> None:
    with Folder(tree) as root:
        path = root.path(rel)
        assert is_descriptor_path(path)
        model, _ = load_model(path)
        assert model.num_parameters() == _model().num_parameters()
        assert companion_files(path) == [
            root.path(str(Path(p).relative_to(tree))) for p in companion_files(tree / rel)
        ]


@pytest.mark.parametrize(
    ("rel", "why"),
    [
        ("out/m.safetensors", "passes through out, a link that " + OUT),
        ("up/m.safetensors", "climbs out of its folder with '..' (after the link up)"),
        ("../outside/m.safetensors", "climbs out of its folder"),
        ("sub/../../outside/m.safetensors", "climbs out of its folder"),
        ("in/../../outside/m.safetensors", "climbs out of its folder"),
    ],
)
def test_a_folder_refuses_every_way_out(tree: Path, rel: str, why: str) -> None:
    with Folder(tree) as root:
        with pytest.raises(WeightLoadError, match=re.escape(why)):
            load_weights(root.path(rel))
        with pytest.raises(LeavesFolder):
            root.resolve(rel)
        with pytest.raises(LeavesFolder), atomic_writer(root.path(rel)) as f:
            f.write(b"never")
    assert not (tree.parent / "outside" / "never").exists()


def test_links_inside_are_followed_by_the_walk(tree: Path) -> None:
    with Folder(tree) as root:
        assert root.resolve("in/m.bin") == "sub/m.bin"
        assert root.resolve("in-abs/./m.bin") == "sub/m.bin"
        assert root.resolve("sub/../in/new/../x") == "sub/x"
        assert root.resolve("missing/../sub") == "sub"
        assert load_weights(root.path("in-abs/m.bin")).tensors


def test_writes_are_atomic_and_stay_inside(tree: Path) -> None:
    outside = tree.parent / "outside"
    before = snapshot(outside)
    with Folder(tree) as root:
        save_weights(_model(), root.path("new/deeper/w.mwb"), "custom")
        assert detect_format(tree / "new" / "deeper" / "w.mwb") == "custom"
        # A link at the file's own name is replaced, never written through.
        (tree / "sub" / "link.safetensors").symlink_to(outside / "m.safetensors")
        save_weights(_model(), root.path("sub/link.safetensors"), "safetensors")
        assert not (tree / "sub" / "link.safetensors").is_symlink()
        # A failed write leaves nothing behind.
        with pytest.raises(RuntimeError), atomic_writer(root.path("sub/half.bin")) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert not list((tree / "sub").glob("*half*")) and not list(tree.rglob("*.tmp"))
    assert snapshot(outside) == before


def test_an_already_open_file_is_read_through_its_descriptor(tmp_path: Path) -> None:
    path = save_weights(_model(), tmp_path / "w.safetensors", "safetensors")
    with open(path, "rb") as f:
        path.unlink()  # nothing left by that name: only the descriptor reaches the bytes
        model, _ = load_model(f"/proc/self/fd/{f.fileno()}")
    assert model.num_parameters() == _model().num_parameters()


def test_the_folder_held_is_the_folder_opened(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    save_weights(_model(), tmp_path / "root" / "w.safetensors", "safetensors")
    with Folder(tmp_path / "root") as root:
        (tmp_path / "root").rename(tmp_path / "moved")
        (tmp_path / "root").symlink_to(tmp_path / "elsewhere")
        assert load_weights(root.path("w.safetensors")).tensors


# ---------------------------------------------------------------------- the race
CLEAR = re.compile(OUT + r"|climbs out|does not exist|No such file|is missing|cannot read")


def test_a_racing_swapper_never_gets_a_read_or_write_outside(tmp_path: Path) -> None:
    """Load and save through root/box thousands of times while box keeps becoming a link out.

    The outside folder holds a valid weights file under the very name loaded and one under the
    name saved: a read that followed the link would succeed, a write would change it. The
    kernel's inotify sees every access to them; there must be none.
    """
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "box").mkdir(parents=True)
    outside.mkdir()
    tensors = {"w": torch.arange(6, dtype=torch.float32)}
    write_safetensors(root / "box" / "w.safetensors", tensors)
    write_safetensors(outside / "w.safetensors", {"w": torch.zeros(6)})
    write_safetensors(outside / "out.safetensors", {"w": torch.zeros(6)})
    canaries = snapshot(outside)
    loaded = saved = 0
    refusals: list[str] = []
    with Folder(root) as folder, Watch(outside) as watch:
        swapper = Swapper(root, "box", outside)
        swapper.start()
        try:
            for i in range(2000):
                try:
                    got = load_weights(folder.path("box/w.safetensors"), progress=False)
                    assert torch.equal(got.tensors["w"], tensors["w"])
                    loaded += 1
                except WeightLoadError as e:
                    refusals.append(str(e))
                try:
                    write_safetensors(folder.path("box/out.safetensors"), {"i": torch.tensor(i)})
                    saved += 1
                except OSError as e:
                    refusals.append(str(e))
        finally:
            flips = swapper.stop()
        events = watch.close()
    assert events == [], f"the outside folder was touched: {events[:10]}"
    assert snapshot(outside) == canaries
    unclear = [r for r in refusals if not CLEAR.search(r)]
    assert not unclear, unclear[:5]
    assert flips > 100, flips
    assert loaded > 0 and saved > 0, (loaded, saved)
    assert any(OUT in r for r in refusals), "the swapper never won a race: nothing was tested"
