"""One update step: target-only logits and stop-when-right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.learner.helpers import make_learner, weights_of
from workbench import losses
from workbench.batching import collate, encode_example
from workbench.learner import LearningConfig, TrainingExample
from workbench.learner._training import Trainer
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer


@pytest.mark.parametrize("loss_fn", ["cross_entropy", "mse"])
def test_target_only_logits_give_the_full_head_losses(loss_fn: str) -> None:
    tok = ByteTokenizer()
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=3)
    cfg = LearningConfig(loss_fn=loss_fn, checkpoint_frequency=None)  # type: ignore[arg-type]
    trainer = Trainer(model, tok, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(7)
    texts = [
        "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (n,), generator=gen))
        for n in (5, 17, 9)
    ]
    chunk = [
        encode_example(tok, 0, texts[0], " xyz", 1.0, 64),
        encode_example(tok, 1, texts[1], None, 1.0, 64),  # self-supervised: loss everywhere
        encode_example(tok, 2, texts[2], " a much longer target text", 1.0, 64),
    ]
    pad = tok.eos_id or 0
    per, right = trainer._per_example_loss(chunk, pad)
    assert right is None
    batch = collate(chunk, pad, torch.device("cpu"))
    fn = losses.cross_entropy if loss_fn == "cross_entropy" else losses.mse
    expect = fn(model(batch.ids), batch.labels, reduction="none")
    torch.testing.assert_close(per, expect, rtol=1e-5, atol=1e-6)


def test_stop_when_right_leaves_a_known_example_alone(tmp_path: Path) -> None:
    with make_learner(
        tmp_path,
        update_frequency=100,
        replay_fraction=0.0,
        learning_rate=1e-2,
        skip_known_below=None,
    ) as learner:
        ex = TrainingExample("7 + 5 =", " 12")
        learner.add_example(ex)
        for _ in range(60):  # teach it until greedy decoding gives the target and then EOS
            learner.force_update()
            if learner.generate("7 + 5 =", max_new_tokens=4) == " 12":
                break
        assert learner.generate("7 + 5 =", max_new_tokens=4) == " 12"
        learner.configure(stop_when_right=0.0)
        before = weights_of(learner)
        learner.force_update()  # replay-only: the same, already known, example
        after = weights_of(learner)
        assert all(torch.equal(before[k], after[k]) for k in before)
        # with a margin it cannot meet yet, the same example trains again
        learner.configure(stop_when_right=1e6)
        learner.force_update()
        assert any(not torch.equal(before[k], v) for k, v in weights_of(learner).items())


def test_stop_when_right_is_validated() -> None:
    with pytest.raises(ValueError, match="stop_when_right"):
        LearningConfig(stop_when_right=-1.0)


def test_passes_are_grouped_by_length(monkeypatch: pytest.MonkeyPatch) -> None:
    tok = ByteTokenizer()
    cfg = LearningConfig(batch_size=2, checkpoint_frequency=None)
    trainer = Trainer(Transformer(ModelConfig.preset("tiny-llama")), tok, cfg, torch.device("cpu"))
    lengths = [3, 200, 4, 5, 150, 6]
    batch = [encode_example(tok, i, "x" * n, " y", 1.0, 256) for i, n in enumerate(lengths)]
    seen: list[list[int]] = []
    real = trainer._per_example_loss

    def spy(chunk, pad):  # type: ignore[no-untyped-def]
        seen.append([len(e.ids) for e in chunk])
        return real(chunk, pad)

    monkeypatch.setattr(trainer, "_per_example_loss", spy)
    trainer.step(batch)
    # the two long examples share one pass; the short ones are not padded to them
    assert seen == [[5, 6], [7, 8], [152, 202]]


def test_a_cut_example_is_reported_at_submission(tmp_path: Path) -> None:
    with make_learner(tmp_path, max_seq_len=64) as learner:
        short = learner.add_example(TrainingExample("abc", " d"))
        assert (short.tokens, short.kept_tokens) == (5, 5) and "cut" not in short.message
        long = learner.add_example(TrainingExample("q" * 500, " answer"))
        assert (long.tokens, long.kept_tokens) == (507, 64)
        assert "507 tokens long and training sees 64 (max_seq_len)" in long.message
        assert "start of the input is cut" in long.message
