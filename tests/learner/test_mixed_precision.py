"""bfloat16 fine-tuning steps (learner/_mixed.py): forward and backward on bfloat16 copies of the
matrices, float32 master weights; checked against the float32 step on the same weights."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.learner.helpers import make_learner
from workbench.batching import encode_example
from workbench.learner import LearnerError, LearningConfig, TrainingExample
from workbench.learner._mixed import Shadows, bf16_units, resolve_compute
from workbench.learner._training import Trainer
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

CPU = torch.device("cpu")


def _model(preset: str = "tiny-llama", seed: int = 3) -> Transformer:
    model = Transformer(ModelConfig.preset(preset), seed=seed)
    model.pretrained = True
    return model


def _examples(n: int = 6, seed: int = 0) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    tok = ByteTokenizer()
    out = []
    for i in range(n):
        q = "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (8,), generator=g))
        a = " " + "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (4,), generator=g))
        out.append(encode_example(tok, i, q, a, 1.0, 256))
    return out


def _trainer(model: Transformer, compute: str, **kw: Any) -> Trainer:
    cfg = LearningConfig(update_method="finetune", learning_rate=1e-3, compute_dtype=compute, **kw)  # type: ignore[arg-type]
    return Trainer(model, ByteTokenizer(), cfg, CPU)


def test_auto_is_bfloat16_only_for_a_pretrained_float32_model_on_bfloat16_hardware() -> None:
    model = _model()
    assert resolve_compute("float32", model, CPU) == torch.float32
    assert resolve_compute("bfloat16", model, CPU) == torch.bfloat16
    want = torch.bfloat16 if bf16_units(CPU) else torch.float32
    assert resolve_compute("auto", model, CPU) == want
    model.pretrained = False  # a random model learns from scratch: exact math
    assert resolve_compute("auto", model, CPU) == torch.float32
    model.pretrained = True
    model.to(torch.bfloat16)  # already bfloat16: no copies to make
    assert resolve_compute("auto", model, CPU) == torch.float32


def test_compute_dtype_is_validated() -> None:
    with pytest.raises(LearnerError, match="compute_dtype must be"):
        LearningConfig(compute_dtype="float16")  # type: ignore[arg-type]


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_a_bfloat16_pass_matches_float32_to_bfloat16_rounding(preset: str) -> None:
    model = _model(preset)
    ex = _examples()
    ref = _trainer(model, "float32")
    per32, _ = ref._per_example_loss(ex, 0)
    per32.sum().backward()
    g32 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    half = _trainer(model, "bfloat16")
    shadows = half.shadows()
    assert shadows is not None
    with shadows.swapped():
        per16, _ = half._per_example_loss(ex, 0)
    assert per16.dtype == torch.float32
    per16.sum().backward()
    shadows.collect()
    torch.testing.assert_close(per16, per32, rtol=0.02, atol=0.02)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
        cos = F.cosine_similarity(p.grad.flatten().double(), g32[name].flatten().double(), dim=0)
        assert cos > 0.99, (name, float(cos))
    # the masters are back in the modules, and the model computes in float32 again
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).dtype == torch.float32


def test_tied_weights_share_one_shadow_and_sum_both_gradients() -> None:
    model = _model("tiny-llama")
    assert model.cfg.tie_embeddings
    shadows = Shadows(model)
    emb = model.tok_emb.weight
    assert sum(p is emb for p in shadows._masters) == 1
    trainer = _trainer(model, "bfloat16")
    ex = _examples()
    s = trainer.shadows()
    assert s is not None
    with s.swapped():
        per, _ = trainer._per_example_loss(ex, 0)
    per.sum().backward()
    s.collect()
    ref = _model("tiny-llama")  # same seed: same weights, float32 reference
    per32, _ = _trainer(ref, "float32")._per_example_loss(ex, 0)
    per32.sum().backward()
    got, want = model.tok_emb.weight.grad, ref.tok_emb.weight.grad
    assert got is not None and want is not None
    rows = torch.unique(torch.tensor([i for e in ex for i in e.ids]))  # input rows: both uses
    cos = F.cosine_similarity(got[rows].flatten().double(), want[rows].flatten().double(), dim=0)
    assert cos > 0.99


def test_shadows_follow_every_write_to_the_masters_and_only_then_copy() -> None:
    model = _model()
    s = Shadows(model)
    s.refresh()
    w = model.blocks[0].mlp.up.weight
    h = s._half[id(w)]
    version = h._version
    s.refresh()  # nothing wrote: no copy
    assert h._version == version
    with torch.no_grad():
        w.add_(torch.randn_like(w))  # any in-place write
    s.refresh()
    assert h._version > version
    torch.testing.assert_close(h.float(), w, rtol=2**-8, atol=0)
    with torch.no_grad():  # a swapped storage (the undo point's out-of-place step)
        w.data = torch.randn_like(w)
    s.refresh()
    torch.testing.assert_close(h.float(), w, rtol=2**-8, atol=0)


def test_a_bfloat16_step_lands_near_the_float32_step() -> None:
    ex = _examples()
    after: dict[str, dict[str, torch.Tensor]] = {}
    losses = {}
    for compute in ("float32", "bfloat16"):
        model = _model()
        trainer = _trainer(model, compute, skip_known_below=None)
        losses[compute] = [trainer.step(ex)[0] for _ in range(3)]
        after[compute] = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = {n: p.detach() for n, p in _model().named_parameters()}
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]  # it learns
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
    for name, w0 in start.items():
        d32 = (after["float32"][name] - w0).flatten().double()
        d16 = (after["bfloat16"][name] - w0).flatten().double()
        assert after["bfloat16"][name].dtype == torch.float32
        assert F.cosine_similarity(d16, d32, dim=0) > 0.95, name


def test_attention_runs_in_float32_under_cpu_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.dtype] = []
    real = F.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
        seen.append(q.dtype)
        return real(q, *args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.tensor([[5, 6, 7, 8]]))
    assert out.dtype == torch.bfloat16  # the head ran in bfloat16
    assert seen and set(seen) == {torch.float32}


def test_a_learner_fine_tunes_in_bfloat16_beside_its_edit_memory(tmp_path: Any) -> None:
    """A labeling-style fine-tuning example on a model whose edit memory holds a taught fact:
    the bfloat16 step runs through the memory's layer and keeps the memory."""
    learner = make_learner(
        tmp_path, update_frequency=1, compute_dtype="bfloat16", replay_fraction=0.0
    )
    try:
        learner.add_example(TrainingExample("zq?", " kx", method="edit"))
        learner.force_update()
        learner.add_example(TrainingExample("review: fine. label:", " good", method="finetune"))
        learner.force_update()
        assert learner.get_stats()["last_error"] is None
        assert learner.get_stats()["total_updates"] == 2
        assert learner.describe()["edit_memory"] > 0
    finally:
        learner.close(checkpoint=False)


def test_configure_switches_the_compute_dtype_and_keeps_learning() -> None:
    model = _model()
    trainer = _trainer(model, "bfloat16")
    ex = _examples()
    trainer.step(ex)
    assert trainer.shadows() is not None
    trainer.cfg = dataclasses.replace(trainer.cfg, compute_dtype="float32")
    assert trainer.shadows() is None
    trainer.step(ex)
    trainer.cfg = dataclasses.replace(trainer.cfg, compute_dtype="bfloat16")
    s = trainer.shadows()
    assert s is not None
    s.refresh()
    w = model.blocks[0].attn.q.weight
    torch.testing.assert_close(s._half[id(w)].float(), w, rtol=2**-8, atol=0)


def test_idle_time_stops_remeasuring_edit_statistics_once_fine_tuning_writes() -> None:
    """A labeling session fine-tunes after every answer, and each step voids the edit
    statistics: the worker's idle preparation (SmolLM2: ~5 s) must not run again after each
    one, holding up the next answer's update; an edit makes it prepare again."""
    model = _model()
    trainer = Trainer(
        model, ByteTokenizer(), LearningConfig(update_method="edit", learning_rate=1e-3), CPU
    )
    assert trainer.prepare()  # first idle moment: measured ahead of the first edit
    assert not trainer.prepare()  # ready
    tok = ByteTokenizer()
    label = dataclasses.replace(
        encode_example(tok, 0, "review: fine. label:", " good", 1.0, 256), method="finetune"
    )
    trainer.step([label])
    assert not trainer.editor().ready()  # the step voided them...
    assert not trainer.prepare()  # ...and idle time leaves them to the next edit
    fact = dataclasses.replace(encode_example(tok, 1, "zq?", " kx", 1.0, 256), method="edit")
    trainer.step([fact])  # measures what it needs itself
    assert trainer.editor().ready()
    trainer.step([label])
    assert not trainer.prepare()
