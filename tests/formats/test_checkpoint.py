"""Checkpoints: exact resume of training, RNG restore, sha256 verification, atomic writes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.formats import WeightLoadError, build_model, load_checkpoint, save_checkpoint
from workbench.formats._common import ModelState
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

CFG = ModelConfig.preset("tiny-llama", n_layer=2)


def _steps(model: Transformer, opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(0, 257, (2, 12), generator=gen)
        loss = torch.nn.functional.cross_entropy(
            model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_adamw_bit_identical(tmp_path: Path) -> None:
    straight = Transformer(CFG, seed=0)
    opt = torch.optim.AdamW(straight.parameters(), lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1)
    _steps(straight, opt, 5, seed=1)
    path = save_checkpoint(
        tmp_path / "a.ckpt",
        straight,
        ByteTokenizer(),
        optimizer=opt,
        learner_state={"updates": 5, "lr": 1e-3},
    )
    _steps(straight, opt, 5, seed=2)

    ck = load_checkpoint(path)
    resumed = build_model(
        ModelState(
            ck.config, {k: v.clone() for k, v in ck.state_dict.items()}, ck.tokenizer, "custom"
        )
    )
    opt2 = torch.optim.AdamW(resumed.parameters())
    assert ck.optimizer_state is not None
    opt2.load_state_dict(ck.optimizer_state)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    _steps(resumed, opt2, 5, seed=2)
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert ck.learner_state == {"updates": 5, "lr": 1e-3}


def test_rng_restored(tmp_path: Path) -> None:
    model = Transformer(CFG, seed=0)
    path = save_checkpoint(tmp_path / "r.ckpt", model, None)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    ck = load_checkpoint(path)
    assert ck.rng is not None and ck.tokenizer is None
    ck.rng.restore()
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_extra_tensors_and_verify(tmp_path: Path) -> None:
    model = Transformer(CFG, seed=0)
    extra = {"ema.tok_emb": torch.arange(6.0).reshape(2, 3)}
    path = save_checkpoint(tmp_path / "e.ckpt", model, ByteTokenizer(), extra_tensors=extra)
    assert torch.equal(load_checkpoint(path).extra_tensors["ema.tok_emb"], extra["ema.tok_emb"])
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01  # inside the weights part
    path.write_bytes(bytes(data))
    with pytest.raises(WeightLoadError, match="fails its sha256"):
        load_checkpoint(path)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    model = Transformer(CFG, seed=0)
    path = save_checkpoint(tmp_path / "c.ckpt", model, ByteTokenizer())
    before = path.read_bytes()
    with pytest.raises(Exception, match="without pickle"):
        save_checkpoint(path, model, ByteTokenizer(), learner_state={"bad": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]  # no temp file left behind


def test_not_a_checkpoint(tmp_path: Path) -> None:
    from workbench.formats import save_weights

    path = save_weights(Transformer(CFG), tmp_path / "w.ckpt", "safetensors")
    with pytest.raises(WeightLoadError, match="not a workbench checkpoint"):
        load_checkpoint(path)
