"""Locate-and-edit updates (update_method="edit") on tiny random models of both families."""

from __future__ import annotations

import dataclasses
import random
import string
from pathlib import Path

import pytest
import torch

from tests.learner.helpers import make_learner, weights_of
from workbench.batching import encode_example
from workbench.learner import LearnerError, LearningConfig, OnlineLearner, TrainingExample
from workbench.learner._edit_above import Above
from workbench.learner._edit_keys import choose_keys, self_samples, words_of
from workbench.learner._editing import MAX_PASSES, Editor, default_edit_layer, editable, write_in
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

TEMPLATES = [
    "The capital of {} is",
    "{}'s capital city is",
    "Q: What is the capital of {}?\nA:",
    "Everyone in {} knows their capital is",
]


def _name(rng: random.Random) -> str:
    return rng.choice(string.ascii_uppercase) + "".join(
        rng.choice("aeiou" if i % 2 else "rstlnvkdm") for i in range(rng.randint(5, 8))
    )


def _paraphrases(subject: str, answer: str) -> list[tuple[str, str]]:
    return [(t.format(subject), " " + answer) for t in TEMPLATES]


def _loss(model: Transformer, tok: ByteTokenizer, pairs: list[tuple[str, str]]) -> float:
    enc = [encode_example(tok, i, q, a, 1.0, 256) for i, (q, a) in enumerate(pairs)]
    losses = []
    with torch.no_grad():
        for e in enc:
            logits = model(torch.tensor([e.ids]))[0]
            labels = torch.tensor(e.labels)
            keep = labels != -100
            losses.append(float(torch.nn.functional.cross_entropy(logits[keep], labels[keep])))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_an_edit_lowers_the_loss_and_changes_one_matrix_only(preset: str) -> None:
    # A random model routes little from the subject to the answer, so this checks the
    # mechanics; what an edit teaches a real model is tested on SmolLM2 (slow tests).
    rng = random.Random(preset)
    model = Transformer(ModelConfig.preset(preset), seed=rng.randrange(1000)).eval()
    tok = ByteTokenizer()
    pairs = _paraphrases(_name(rng), rng.choice(string.ascii_uppercase))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer = default_edit_layer(model.cfg.n_layer)
    editor = Editor(model, tok, layer, steps=30, clamp=200.0, regularization=10.0, store="weights")
    enc = [encode_example(tok, i, q, a, 1.0, 256) for i, (q, a) in enumerate(pairs)]
    loss0 = _loss(model, tok, pairs)
    result = editor.update(enc, pad=0)
    loss1 = _loss(model, tok, pairs)
    assert result.edited and result.groups == 1 and 30 <= result.steps <= 30 * MAX_PASSES
    assert result.loss == pytest.approx(loss0, rel=1e-4)
    assert loss1 < loss0 - 0.05, (loss0, loss1)
    edited = f"blocks.{layer}.mlp.down.weight"
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {edited}


def test_the_write_in_maps_rare_keys_to_their_residuals_and_spares_generic_keys(
    rng: torch.Generator,
) -> None:
    width, d, n_generic = 48, 16, 4000
    # generic keys live mostly in a 40-dimensional subspace; the edited keys stick out of it
    basis = torch.linalg.qr(torch.randn(width, width, generator=rng))[0]
    scales = torch.cat([torch.ones(40), torch.full((8,), 0.01)])
    generic = torch.randn(n_generic, width, generator=rng) * scales @ basis.T
    cov = generic.T @ generic / n_generic
    keys = (torch.randn(3, width, generator=rng) * scales.flip(0)) @ basis.T * 3
    residuals = torch.randn(3, d, generator=rng)
    dw = write_in(keys, residuals, torch.tensor([1.0, 2.0, 0.5]), cov, regularization=10.0)
    assert dw.shape == (d, width)
    torch.testing.assert_close(keys @ dw.T, residuals, atol=0.05, rtol=0.05)
    moved = (generic @ dw.T).norm(dim=-1).mean()
    assert float(moved) < 0.05 * float(residuals.norm(dim=-1).mean())
    # without the generic term it would be the plain least-norm solution, which moves them
    plain = write_in(keys, residuals, torch.ones(3), torch.eye(width) * 1e-9, 1.0)
    assert float((generic @ plain.T).norm(dim=-1).mean()) > 5 * float(moved)


@pytest.mark.parametrize("store", ["weights", "memory"])
def test_undo_of_an_edit_is_bit_exact(tmp_path: Path, store: str) -> None:
    rng = random.Random(5)
    with make_learner(
        tmp_path, update_frequency=100, update_method="edit", edit_store=store
    ) as learner:
        for q, a in _paraphrases(_name(rng), _name(rng)):
            learner.add_example(TrainingExample(q, a))
        learner.force_update()
        weights = weights_of(learner)
        memory = _memory_of(learner)
        for q, a in _paraphrases(_name(rng), _name(rng)):
            learner.add_example(TrainingExample(q, a))
        learner.force_update()
        if store == "weights":
            assert not all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        else:  # the weights stay; the memory gains the second word's entries
            assert all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
            now = _memory_of(learner)
            assert memory is not None and now is not None and len(now[0]) > len(memory[0]) > 0
        learner.undo_last_update()
        assert all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        after = _memory_of(learner)
        assert (memory is None) == (after is None)
        if memory is not None and after is not None:
            assert len(after) == len(memory)
            assert all(torch.equal(a, b) for a, b in zip(after, memory, strict=True))


def _memory_of(learner: OnlineLearner) -> list[torch.Tensor] | None:
    """The published model's edit memory as its tensors (None: no memory)."""
    with learner.reading() as snap:
        mem = snap.model.edit_memory
    return None if mem is None else [mem.directions, mem.keys, mem.values]


def test_self_supervised_examples_are_still_fine_tuned(tmp_path: Path) -> None:
    with make_learner(tmp_path, update_frequency=100, update_method="edit") as learner:
        weights = weights_of(learner)
        learner.add_example(TrainingExample("plain text to continue, no target", None))
        learner.force_update()
        changed = [k for k, v in weights_of(learner).items() if not torch.equal(weights[k], v)]
        assert len(changed) > 1  # an optimizer step, not an edit
        assert learner._worker.trainer.last_edit is None


def test_each_example_can_say_how_it_is_taught(tmp_path: Path) -> None:
    # An edit learner fine-tunes a method="finetune" example (a label) beside the facts it
    # edits in; a fine-tuning learner edits a method="edit" one. The choice is stored, so a
    # resumed session replays it the same way.
    rng = random.Random(11)
    with make_learner(tmp_path / "e", update_frequency=100, update_method="edit") as learner:
        weights = weights_of(learner)
        for q, a in _paraphrases(_name(rng), _name(rng)):
            learner.add_example(TrainingExample(q, a))
        learner.add_example(TrainingExample("Review: fine. Rating:", " 4", method="finetune"))
        learner.force_update()
        changed = [k for k, v in weights_of(learner).items() if not torch.equal(weights[k], v)]
        assert len(changed) > 1  # the label's optimizer step
        assert learner._worker.trainer.last_edit is not None  # and the facts' edit
        assert _memory_of(learner) is not None
        kinds = {r.input: r.method for r in learner.recent_examples(10)}
        assert kinds["Review: fine. Rating:"] == "finetune"
        assert {v for k, v in kinds.items() if k != "Review: fine. Rating:"} == {None}
    with make_learner(tmp_path / "f", update_frequency=100) as learner:
        weights = weights_of(learner)
        for q, a in _paraphrases(_name(rng), _name(rng)):
            learner.add_example(TrainingExample(q, a, method="edit"))
        learner.force_update()
        assert all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        assert learner._worker.trainer.last_edit is not None and _memory_of(learner) is not None


def test_an_example_method_is_validated(tmp_path: Path) -> None:
    with pytest.raises(LearnerError, match="method must be 'edit', 'finetune' or None"):
        TrainingExample("a", " b", method="lora")  # type: ignore[arg-type]
    with pytest.raises(LearnerError, match="without a target cannot be edited"):
        TrainingExample("some text", None, method="edit")
    with make_learner(tmp_path, update_frequency=100, loss_fn="mse") as learner:
        with pytest.raises(LearnerError, match="cross-entropy"):
            learner.add_example(TrainingExample("a", " b", method="edit"))
        assert learner.get_stats()["total_examples"] == 0  # refused before it was stored


def test_the_covariance_follows_the_weights() -> None:
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=1)
    editor = Editor(
        model, ByteTokenizer(), 1, steps=5, clamp=4.0, regularization=100.0, store="weights"
    )
    c1 = editor.covariance()
    assert editor.covariance() is c1  # cached while the keys' weights stay
    with torch.no_grad():
        model.blocks[1].mlp.down.weight.mul_(2.0)  # the edited matrix: keys unchanged
    assert editor.covariance() is c1
    with torch.no_grad():
        model.blocks[0].mlp.up.weight.mul_(1.5)  # below the edit: keys changed
    c2 = editor.covariance()
    assert c2 is not c1 and not torch.allclose(c1[1], c2[1])
    assert torch.linalg.eigvalsh(c2[1]).min() > 0  # ridged: the write-in's solve is well posed


def test_choose_keys_prefers_the_shared_surprising_word() -> None:
    rng = random.Random(2)
    subject = _name(rng)
    pieces = [[" The", " capital", " of", f" {subject}", " is"], [f" {subject}", "'s", " city"]]
    words = [words_of(p) for p in pieces]
    surprisal = [[rng.uniform(0, 2) for _ in p] for p in pieces]
    surprisal[0][3] += 8  # the invented name is what surprises the model
    surprisal[1][0] += 8
    assert choose_keys(words, surprisal) == [(subject, 3), (subject, 0)]
    # an example sharing no word with the others keys on its own most surprising word
    words.append(words_of([" zebra", " quartz"]))
    surprisal.append([1.0, 4.0])
    assert choose_keys(words, surprisal)[2] == ("quartz", 1)


def test_edit_settings_are_validated() -> None:
    assert LearningConfig.for_pretrained().update_method == "edit"
    assert LearningConfig.for_pretrained(edit_layer=3).edit_layer == 3
    for bad in (
        dict(update_method="rome"),
        dict(edit_layer=-1),
        dict(edit_steps=0),
        dict(edit_clamp=0.0),
        dict(edit_regularization=float("nan")),
    ):
        with pytest.raises(LearnerError):
            LearningConfig(**bad)  # type: ignore[arg-type]


def test_an_edit_layer_beyond_the_model_is_a_clear_error(tmp_path: Path) -> None:
    with make_learner(
        tmp_path, update_frequency=100, update_method="edit", edit_layer=40
    ) as learner:
        learner.add_example(TrainingExample("The capital of Zorvia is", " Kell"))
        with pytest.raises(LearnerError, match="edit_layer 40 does not exist"):
            learner.force_update()


def test_the_key_statistics_are_ready_before_the_first_correction(tmp_path: Path) -> None:
    import time

    with make_learner(tmp_path, update_frequency=100, update_method="edit") as learner:
        trainer = learner._worker.trainer
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            editor = trainer._editor
            if editor is not None and editor.ready():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the idle worker did not measure the edit's key covariance")


def test_edits_spread_over_layers_and_keep_earlier_edits() -> None:
    """With ``spread=2`` both layers' down projections change and nothing else; the keys of
    an edit are kept, and a later edit leaves what they give nearly as it was."""
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=5)
    tok = ByteTokenizer()
    editor = Editor(
        model, tok, 2, steps=30, clamp=200.0, regularization=10.0, spread=2, store="weights"
    )
    assert editor.layers == (1, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = [encode_example(tok, i, f"Q{i}: zqxv is", " 7", 1.0, 64) for i in range(3)]
    assert editor.update(first, 0).edited
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"blocks.1.mlp.down.weight", "blocks.2.mlp.down.weight"}
    assert all(list(editor._kept[at]) == ["zqxv"] for at in (1, 2))
    k1 = editor._kept[1]["zqxv"][0]
    with torch.no_grad():
        out1 = model.blocks[1].mlp.down(k1)
    second = [encode_example(tok, 9 + i, f"R{i}: wkbj is", " 3", 1.0, 64) for i in range(3)]
    assert editor.update(second, 0).edited
    with torch.no_grad():
        moved = (model.blocks[1].mlp.down(k1) - out1).norm() / out1.norm()
    assert float(moved) < 0.05  # the earlier edit's key gives what it gave


def test_a_corrected_edit_replaces_the_words_kept_key() -> None:
    """Teaching the same word again (a correction) is not held back by the memory of its
    first edit: its kept key is replaced."""
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=6)
    tok = ByteTokenizer()
    editor = Editor(model, tok, 2, steps=40, clamp=200.0, regularization=10.0, store="weights")
    first = [encode_example(tok, i, f"Q{i}: zqxv is", " 7", 1.0, 64) for i in range(3)]
    other = [encode_example(tok, 5 + i, f"P{i}: mmrt is", " 5", 1.0, 64) for i in range(3)]
    assert editor.update(first, 0).edited and editor.update(other, 0).edited
    fixed = [encode_example(tok, 9 + i, f"Q{i}: zqxv is", " 3", 1.0, 64) for i in range(3)]
    corrected = editor.update(fixed, 0)
    assert corrected.edited
    assert sorted(editor._kept[2]) == ["mmrt", "zqxv"]  # one entry per word
    # a random model routes little from a word to its answer: this checks that the correction
    # moved its way, not held back by the old key's "keep what I gave" (SmolLM2: slow tests)
    assert editor.update(fixed, 0).loss < corrected.loss - 0.05


def test_models_with_mlp_post_norms_are_not_edited() -> None:
    cfg = ModelConfig.preset("tiny-llama")
    model = Transformer(cfg, seed=0)
    assert editable(model)
    for block in model.blocks:
        block.post_norms = True  # as Gemma's blocks
    assert not editable(model)
    with pytest.raises(ValueError, match="post-norms"):
        Editor(model, ByteTokenizer(), 1, steps=5, clamp=4.0, regularization=100.0)


def test_the_models_own_samples_are_seeded_and_sized() -> None:
    """The covariance corpus's second half is the model's own text: the same for the same
    weights (a covariance is reproducible), of the asked length, and sampled (not one repeated
    greedy loop)."""
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=3)
    tok = ByteTokenizer()
    a = self_samples(model, tok, 256)
    assert a == self_samples(model, tok, 256) and len(a) == 256
    assert a != self_samples(model, tok, 256, seed=1)
    assert len(set(a)) > 30  # a random byte model samples many distinct bytes


@pytest.mark.parametrize(
    ("preset", "window"), [("tiny-llama", None), ("tiny-gpt2", None), ("tiny-llama", 6)]
)
def test_the_layers_above_run_each_row_from_its_own_start_as_on_the_whole_sequence(
    preset: str, window: int | None
) -> None:
    """The residual loop runs each example only from its first changed position to its last
    target, over the cached keys and values of the positions before (rows of different
    lengths left-aligned in one batch, each at its own positions): the same stream (and the
    same gradient) as the whole sequence. With a sliding window the rows share their start."""
    from dataclasses import replace

    gen = torch.Generator().manual_seed(31)
    cfg = ModelConfig.preset(preset)
    if window is not None:
        cfg = replace(cfg, sliding_window=window)
    model = Transformer(cfg, seed=8).eval()
    ids = torch.randint(0, cfg.vocab_size, (3, 19), generator=gen)
    first, starts, ends = 2, [7, 3, 0], [19, 11, 9]
    with torch.no_grad():
        x, rope = model.embed(ids)
        x = model.run_blocks(x, rope, 0, first)
    residual = torch.randn(x.shape[-1], generator=gen, requires_grad=True)
    hits = torch.zeros(x.shape[:2])
    for row, (s, e) in enumerate(zip(starts, ends, strict=True)):
        hits[row, s + 1 : e : 3] = torch.rand(len(range(s + 1, e, 3)), generator=gen) + 0.5

    def shifted(stream: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        return stream + share[..., None] * residual

    whole = model.run_blocks(shifted(x, hits), rope, first, cfg.n_layer)
    if window is not None:
        assert all(cfg.slides(i) for i in range(first, cfg.n_layer))
        starts, ends = [min(starts)] * 3, [max(ends)] * 3  # what split does with a window
    above = Above(model, x, rope, first, starts, ends)
    inside = torch.zeros(x.shape[:2], dtype=torch.bool)
    for row, (s, e) in enumerate(zip(starts, ends, strict=True)):
        inside[row, s:e] = True
    slots = above.gather(inside)
    assert int(slots.sum()) == int(inside.sum())  # every position of each stretch, once
    want = above.gather(whole)[slots]
    (g_whole,) = torch.autograd.grad(want.square().sum(), [residual])
    for _ in range(2):  # a second step reuses the prefixes
        part = above.run(shifted(above.gather(x), above.gather(hits)))[slots]
        torch.testing.assert_close(part, want.detach(), rtol=1e-5, atol=1e-5)
        (g_part,) = torch.autograd.grad(part.square().sum(), [residual])
        torch.testing.assert_close(g_part, g_whole, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="start < end"):
        Above(model, x, rope, first, [3, 3, 9], [2, 5, 10])


def test_the_residual_loop_in_parts_finds_what_it_finds_in_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Examples run through the layers above in parts (peak memory follows the part), rows
    grouped by their stretch's width (not in order: overhead 0 gives each width its own
    part); the summed gradient is the whole batch's, so the residuals come out the same."""
    import workbench.learner._edit_above as above
    import workbench.learner._editing as editing

    tok = ByteTokenizer()
    rng = random.Random(9)
    pairs = _paraphrases(_name(rng), "X") + _paraphrases(_name(rng), "Y")
    enc = [encode_example(tok, i, q, a, 0.5 + i % 3, 64) for i, (q, a) in enumerate(pairs)]
    found, parts = [], []
    split = editing.split
    monkeypatch.setattr(editing, "split", lambda *a, **k: parts.append(split(*a, **k)) or parts[-1])
    for part, overhead in ((100, 1 << 20), (3, 80), (100, 0)):
        monkeypatch.setattr(editing, "_PART", part)
        monkeypatch.setattr(above, "PART_OVERHEAD", overhead)
        model = Transformer(ModelConfig.preset("tiny-llama"), seed=4).eval()
        result = Editor(model, tok, 1, steps=8, clamp=200.0, regularization=10.0).update(enc, 0)
        assert result.edited and model.edit_memory is not None
        found.append(model.edit_memory.values)
    one, small, by_width = ([len(p.live) for p in ps] for ps in parts)
    assert len(one) == 1 and len(small) > 1 and max(small) <= 3 and len(by_width) > 1
    live = [int(r) for p in parts[2] for r in p.live]
    assert sorted(live) == list(range(sum(by_width))) and live != sorted(live)  # regrouped
    for got in found[1:]:
        assert got.shape == found[0].shape
        # Adam divides by the gradient's running size: float sums in another order move a
        # few elements of near-zero gradient by up to a few thousandths of the largest
        scale = float(found[0].abs().max())
        torch.testing.assert_close(got, found[0], rtol=1e-2, atol=5e-3 * scale)


def test_an_optimizer_step_voids_the_key_statistics() -> None:
    """The covariance is kept while the weights its keys depend on keep their versions; our
    fused optimizer writes through data pointers, and must still count as a change."""
    from workbench.optim import FusedAdamW

    model = Transformer(ModelConfig.preset("tiny-llama"), seed=2)
    editor = Editor(model, ByteTokenizer(), 1, steps=2, clamp=8.0, regularization=10.0)
    editor.covariance()
    assert editor.ready()
    opt = FusedAdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(5)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    assert not editor.ready()


def test_a_memory_edit_is_one_residual_loop_that_runs_on_until_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept in the memory an update is one optimizer run: past ``steps`` it goes on while an
    example is not yet answered (a second pass restarted Adam, whose first steps threw nearly
    answered replies back), and says whether it ended with every example answered. (A random
    model's logits hardly move, so its own greedy tokens are the targets and "answered" is
    moved to just below their losses.)"""
    import workbench.learner._editing as editing

    tok = ByteTokenizer()
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=4).eval()
    prompts = [q for q, _ in _paraphrases(_name(random.Random(12)), "X")]

    def losses() -> list[float]:
        out = []
        with torch.no_grad():
            for e in enc:
                logits = model(torch.tensor([e.ids]))[0].float()
                labels = torch.tensor(e.labels)
                on = labels != -100
                assert bool((logits[on].argmax(-1) == labels[on]).all())  # greedy: answered
                out.append(float(torch.nn.functional.cross_entropy(logits[on], labels[on])))
        return out

    with torch.no_grad():
        greedy = [int(model(torch.tensor([tok.encode(p)]))[0, -1].argmax()) for p in prompts]
    enc = [
        encode_example(tok, i, p, tok.decode([t]), 1.0, 64)
        for i, (p, t) in enumerate(zip(prompts, greedy, strict=True))
    ]
    enc = [dataclasses.replace(e, labels=(*e.labels[:-1], -100)) for e in enc]  # no EOS
    before = losses()
    loops: list[int] = []
    run = editing.Editor._update
    monkeypatch.setattr(
        editing.Editor, "_update", lambda self, *a: loops.append(1) or run(self, *a)
    )
    answered = max(before) - 0.15  # reached after 3 Adam steps (0.08, 0.13, 0.16 nats)
    monkeypatch.setattr(editing, "KNOWN_LOSS", answered)
    for done_at in (0.0, answered):  # never reached, then reached
        monkeypatch.setattr(editing, "EDIT_DONE_LOSS", done_at)
        model.edit_memory, loops[:] = None, []
        result = Editor(model, tok, 1, steps=2, clamp=200.0, regularization=10.0).update(enc, 0)
        after = losses()
        assert loops == [1] and 2 < result.steps < 2 * editing.MAX_PASSES, result
        assert max(after) < editing.KNOWN_LOSS  # stopped once answered, before its cap
        assert result.done == (done_at > 0) == (max(after) < done_at)


def test_the_residual_loop_ends_at_the_losses_the_edited_model_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop adds each residual exactly where the edit memory will apply it (every token
    whose key falls within the threshold of an entry, outlying phrasings on entries of their
    own, each example from its own first such token), so the losses it ends at are those the
    edited model gives: one pass, no second pass to repair a mismatch."""
    import workbench.learner._editing as editing

    monkeypatch.setattr(editing, "MAX_PASSES", 1)
    tok = ByteTokenizer()
    rng = random.Random(12)
    pairs = _paraphrases(_name(rng), "X") + _paraphrases(_name(rng), "Y")
    enc = [encode_example(tok, i, q, a, 0.5 + i % 3, 64) for i, (q, a) in enumerate(pairs)]
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=4).eval()
    result = Editor(model, tok, 1, steps=10, clamp=200.0, regularization=10.0).update(enc, 0)
    assert result.edited and model.edit_memory is not None and len(model.edit_memory) >= 2
    with torch.no_grad():  # every example is live here: none was answered before
        per = []
        for e in enc:
            logits = model(torch.tensor([e.ids]))[0].float()
            labels = torch.tensor(e.labels)
            on = labels != -100
            per.append(torch.nn.functional.cross_entropy(logits[on], labels[on]))
    w = torch.tensor([e.weight for e in enc])
    edited = float((torch.stack(per) * w).sum() / w.sum())
    assert result.loss_after < result.loss - 0.05  # it moved
    assert edited == pytest.approx(result.loss_after, rel=1e-4, abs=1e-5)
