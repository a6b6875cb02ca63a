"""Loading weights into a running session: a load the buffered examples cannot survive is
refused before anything is adopted, so a refused load changes nothing at all."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.learner.helpers import make_learner, same
from workbench.formats import save_weights
from workbench.learner import LearnerError, OnlineLearner, TrainingExample
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CHAT = [{"role": "user", "content": "What is 2 + 5?"}]


def _session(learner: OnlineLearner) -> None:
    """Chat and plain examples, some trained (replay), some pending, and a valid undo point."""
    learner.tokenizer.chat_template = TEMPLATE  # the published tokenizer is the worker's too
    learner.add_example(TrainingExample.from_chat(CHAT, "7", id="chat-trained"))
    learner.add_example(TrainingExample("1 + 1 =", " 2"))
    learner.force_update()
    learner.add_example(TrainingExample("3 + 4 =", " 7"))
    learner.force_update()
    learner.add_example(TrainingExample.from_chat(CHAT, "seven", id="chat-pending"))
    learner.add_example(TrainingExample("2 + 2 =", " 4"))
    learner.wait_idle()


def _state(learner: OnlineLearner) -> dict[str, Any]:
    """Everything a load may change, copied: training and published sides, buffers, store."""
    worker = learner._worker
    trainer = worker.trainer
    with learner._publisher.reading() as snap:
        published = {k: v.clone() for k, v in snap.model.state_dict().items()}
        published_tok, version = snap.tokenizer, snap.version
    return {
        "model": trainer.model,
        "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "optimizer_object": trainer.optimizer,
        "tokenizer": trainer.tokenizer,
        "published": published,
        "published_tokenizer": published_tok,
        "version": version,
        "template": trainer.tokenizer.chat_template,
        "counters": (trainer.updates, trainer.base_lr, trainer.generator.get_state().tolist()),
        "rng": worker._rng.getstate(),
        "pending": list(worker._pending),
        "replay": list(worker._replay),
        "undo_valid": worker._undo.valid,
        "store": learner.recent_examples(100),
        "updates": learner.store.updates(),
        "generate": learner.generate("1 + 1 =", max_new_tokens=8),
        "chat": learner.chat(CHAT, max_new_tokens=8),
    }


def _assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("model", "optimizer_object", "tokenizer", "published_tokenizer"):
        assert after[key] is before[key], key
    for key in before:
        assert same(before[key], after[key]), key


def _plain(preset: str, **overrides: Any) -> Any:
    def write(path: Path) -> Path:
        model = Transformer(ModelConfig.preset(preset, **overrides), seed=1)
        return save_weights(
            model, path / "plain.safetensors", "safetensors", tokenizer=ByteTokenizer()
        )

    return write


def _custom_checkpoint(path: Path) -> Path:
    """A full checkpoint (optimizer state, learner RNG) of a session without a chat template."""
    with make_learner(path / "other", seed=3, update_frequency=100) as other:
        other.add_example(TrainingExample("5 + 5 =", " 10"))
        other.force_update()
        return other.save_weights(path / "other.ckpt", "custom")


# Each file fails after ``Trainer.load`` has started adopting it: in place (same architecture),
# with a new model and optimizer (another architecture), with a checkpoint's optimizer state,
# and on a tokenizer larger than the model (no chat examples involved).
REFUSED = {
    "same-architecture": (_plain("tiny-llama"), "chat template"),
    "other-architecture": (_plain("tiny-gpt2"), "chat template"),
    "custom-checkpoint": (_custom_checkpoint, "chat template"),
    "tokenizer-too-large": (_plain("tiny-llama", vocab_size=200), "257 tokens"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_load_changes_nothing(tmp_path: Path, case: str) -> None:
    write, message = REFUSED[case]
    path = write(tmp_path)
    with make_learner(tmp_path / "s", update_frequency=100) as learner:
        _session(learner)
        before = _state(learner)
        with pytest.raises(LearnerError, match=message) as refused:
            learner.load_weights(path)
        if message == "chat template":  # it names what stands in the way
            assert "'chat-trained'" in str(refused.value), refused.value
            assert "'chat-pending'" in str(refused.value), refused.value
        assert learner.get_stats()["state"] != "failed"
        _assert_unchanged(before, _state(learner))
        # Training and inference still agree, and the undo point survived the refusal.
        learner.force_update()
        assert same(
            dict(learner._worker.trainer.model.state_dict()), dict(learner.model.state_dict())
        )
        assert learner.undo_last_update()["updates"] == before["counters"][0]


def test_weights_with_a_chat_template_load_and_re_encode_the_chat_examples(
    tmp_path: Path,
) -> None:
    template = (
        TEMPLATE.replace("<", "#").replace(">", ":").replace("#|endoftext|:", "<|endoftext|>")
    )
    path = save_weights(
        Transformer(ModelConfig.preset("tiny-llama"), seed=1),
        tmp_path / "chat.safetensors",
        "safetensors",
        tokenizer=ByteTokenizer(chat_template=template),
    )
    with make_learner(tmp_path / "s", update_frequency=100) as learner:
        _session(learner)
        info = learner.load_weights(path)
        assert info["tokenizer_changed"]
        tok = learner._worker.trainer.tokenizer
        assert tok.chat_template == template and learner.tokenizer is tok
        pending = {e.seq: e for e in learner._worker._pending}
        chat = next(r for r in learner.recent_examples(100) if r.id == "chat-pending")
        prompt = tok.decode(list(pending[chat.seq].ids[: pending[chat.seq].input_len]))
        assert prompt == "#user:What is 2 + 5?<|endoftext|>#assistant:"
        learner.force_update()


@pytest.mark.parametrize(
    "how",
    [
        {"update_method": "finetune"},
        {},  # "auto": a model from a file is edited, into the memory
        {"update_method": "edit", "edit_store": "weights"},
    ],
)
def test_a_load_gives_the_training_copy_the_asked_float_type(
    tmp_path: Path, how: dict[str, str]
) -> None:
    src = Transformer(ModelConfig.preset("tiny-llama"), seed=11)
    path = save_weights(src, tmp_path / "w.safetensors", "safetensors", tokenizer=ByteTokenizer())
    with make_learner(tmp_path / "s", update_frequency=100, **how) as learner:
        info = learner.load_weights(path, dtype="bfloat16")
        assert info["dtype"] == "bfloat16" and learner.describe()["dtype"] == "bfloat16"
        trained = learner._worker.trainer.model.state_dict()
        for name, value in src.state_dict().items():  # the file's weights, rounded to bf16
            assert torch.equal(trained[name], value.to(torch.bfloat16)), name
        learner.add_example(TrainingExample("1 + 1 =", " 2"))
        assert learner.force_update() is not None  # it trains in that type
        info = learner.load_weights(path)  # no dtype: float32 again, the file's values exact
        assert info["dtype"] == "float32"
        trained = learner._worker.trainer.model.state_dict()
        assert all(torch.equal(trained[n], v) for n, v in src.state_dict().items())
        with pytest.raises(LearnerError, match="dtype must be one of float32, bfloat16"):
            learner.load_weights(path, dtype="int8")


def test_a_save_carries_the_loaded_files_metadata(tmp_path: Path) -> None:
    from gguf import GGUFReader

    src = Transformer(ModelConfig.preset("tiny-llama"), seed=12)
    name = f"model-{torch.randint(0, 10**6, ()).item()}"
    path = save_weights(
        src, tmp_path / "w.gguf", "gguf", tokenizer=ByteTokenizer(), metadata={"general.name": name}
    )
    with make_learner(tmp_path / "s", update_frequency=100) as learner:
        learner.load_weights(path)
        out = learner.save_weights(tmp_path / "out.gguf", "gguf")
    field = GGUFReader(out).get_field("general.name")
    assert field is not None and field.contents() == name
