"""Inference never sees a half-updated model, and the worker keeps training meanwhile."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import torch

from tests.learner.helpers import arithmetic_facts, make_learner
from workbench.learner import TrainingExample
from workbench.models import ModelConfig, Transformer


def test_no_torn_reads_while_training_and_reloading(tmp_path: Path) -> None:
    facts = arithmetic_facts(32, seed=4)
    # Fine-tuning throughout: reloading a weights file marks the model pretrained, and "auto"
    # would switch to edits; this test is about reads during updates, not the update method.
    # inference="reference": the stamps are read by hooks on the fp32 blocks, which the fast
    # copy (an int8 re-quantization, tests/learner/test_fast_inference.py) does not run.
    learner = make_learner(
        tmp_path, update_frequency=2, batch_size=4, update_method="finetune", inference="reference"
    )
    # Stamp every block with the update number; a reader that mixes two versions sees two stamps.
    train_model = learner._worker.trainer.model
    for block in train_model.blocks:
        block.register_buffer("stamp", torch.zeros(()), persistent=False)
    seen = threading.local()

    def record(module: torch.nn.Module, args: object, output: object) -> None:
        if getattr(seen, "stamps", None) is not None:
            seen.stamps.append(float(module.stamp))

    for block in train_model.blocks:
        block.register_forward_hook(record)

    def stamp(_learner: object, rec: object) -> None:
        with torch.no_grad():
            for block in learner._worker.trainer.model.blocks:
                block.stamp.fill_(rec.n)  # type: ignore[attr-defined]

    learner.on_update(stamp)
    # The published snapshot was copied before the stamps existed: publish once more.
    learner.add_example(TrainingExample("warm", " up"))
    learner.force_update()

    weights = tmp_path / "reload.safetensors"
    learner.save_weights(weights, format="safetensors")
    stop = threading.Event()
    errors: list[BaseException] = []

    def feed() -> None:
        i = 0
        try:
            while not stop.is_set():
                if learner.get_stats()["pending_examples"] < 16:
                    learner.add_example(TrainingExample(*facts[i % len(facts)]))
                    i += 1
                if i % 97 == 0:
                    learner.load_weights(weights)
                stop.wait(0.001)
        except BaseException as e:  # surfaced below
            errors.append(e)

    feeder = threading.Thread(target=feed)
    updates_before = learner.get_stats()["total_updates"]
    feeder.start()
    torn = 0
    versions = set()
    try:
        for call in range(1000):
            seen.stamps = []
            learner.generate(facts[call % len(facts)][0], max_new_tokens=2)
            stamps, seen.stamps = seen.stamps, None
            assert stamps and len(stamps) % len(train_model.blocks) == 0
            versions.add(stamps[0])
            torn += len(set(stamps)) != 1
    finally:
        stop.set()
        feeder.join()
    progressed = learner.get_stats()["total_updates"] - updates_before
    learner.close(checkpoint=False)
    assert not errors, errors
    assert torn == 0
    assert progressed >= 10, progressed
    assert len(versions) >= 5  # readers really did see the weights change


def test_architecture_change_on_load_replaces_model(tmp_path: Path) -> None:
    from workbench.formats import save_weights

    other = Transformer(ModelConfig.preset("tiny-gpt2"), seed=5)
    path = tmp_path / "gpt2.safetensors"
    save_weights(other, path, "safetensors")
    with make_learner(tmp_path / "s", preset="tiny-llama", update_frequency=2) as learner:
        learner.add_example(TrainingExample("a", " b"))
        learner.force_update()
        info = learner.load_weights(path)
        assert info["architecture_changed"]
        assert learner.model.cfg.family == "gpt2"
        sd = learner.model.state_dict()
        assert all(torch.equal(sd[k].cpu(), v) for k, v in other.state_dict().items())
        learner.add_example(TrainingExample("c", " d"))
        loss = learner.force_update()
        assert math.isfinite(loss) and loss > 0
        text = learner.generate("a", max_new_tokens=3)
        assert isinstance(text, str) and len(text) <= 3  # one byte token is at most one character
