"""Undo of learning: bit-exact, its examples out of replay, and a resume that agrees."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.learner.helpers import make_learner, same, weights_of
from workbench.learner import LearnerError, OnlineLearner, TrainingExample, _undo

FACTS = [(f"{a} + {b} =", f" {a + b}") for a, b in ((3, 4), (12, 9), (7, 7), (21, 5))]
MORE = [(f"{a} * {b} =", f" {a * b}") for a, b in ((3, 4), (6, 9), (7, 2), (8, 5))]
LATER = [(f"{a} - {b} =", f" {a - b}") for a, b in ((9, 4), (16, 9), (7, 2), (30, 5))]


def _teach(learner: OnlineLearner, pairs: list[tuple[str, str]]) -> float:
    for q, a in pairs:
        learner.add_example(TrainingExample(q, a))
    return learner.force_update()


def _optimizer_state(learner: OnlineLearner) -> dict[str, object]:
    return copy.deepcopy(learner._worker.trainer.optimizer.state_dict())


def _cfg(**kw: object) -> dict[str, object]:
    return dict(update_frequency=100, replay_fraction=0.5, batch_size=4, **kw)


def test_undo_restores_weights_and_optimizer_bit_for_bit(tmp_path: Path) -> None:
    with make_learner(tmp_path, **_cfg()) as learner:
        _teach(learner, FACTS)
        weights, opt = weights_of(learner), _optimizer_state(learner)
        _teach(learner, MORE)
        assert not all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        info = learner.undo_last_update()
        assert info == {"undone_update": 2, "examples_undone": 4, "updates": 1}
        assert all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        assert same(opt, _optimizer_state(learner))
        stats = learner.get_stats()
        assert stats["total_updates"] == 1 and stats["total_examples"] == 4
        status = {r.input: r.status for r in learner.recent_examples(20)}
        assert {status[q] for q, _ in MORE} == {"undone"}
        assert {status[q] for q, _ in FACTS} == {"trained"}
        with pytest.raises(LearnerError, match="nothing to undo"):
            learner.undo_last_update()


def test_after_an_undo_training_goes_on_as_if_the_update_never_was(tmp_path: Path) -> None:
    with make_learner(tmp_path / "a", **_cfg()) as a:
        _teach(a, FACTS)
        _teach(a, MORE)
        a.add_example(TrainingExample(*LATER[0]))  # arrives after the update: stays pending
        a.undo_last_update()
        assert a.get_stats()["pending_examples"] == 1
        for q, t in LATER[1:]:
            a.add_example(TrainingExample(q, t))
        loss_a = a.force_update()
        after_a = weights_of(a)
    with make_learner(tmp_path / "b", **_cfg()) as b:
        _teach(b, FACTS)
        loss_b = _teach(b, LATER)
        after_b = weights_of(b)
    assert loss_a == loss_b
    assert all(torch.equal(after_a[k], v) for k, v in after_b.items())


def test_a_resume_after_an_undo_does_not_bring_the_update_back(tmp_path: Path) -> None:
    with make_learner(tmp_path, **_cfg(checkpoint_frequency=1)) as learner:
        _teach(learner, FACTS)
        _teach(learner, MORE)
        learner.undo_last_update()
        undone = weights_of(learner)
    with make_learner(tmp_path, **_cfg(checkpoint_frequency=1)) as again:
        assert again.get_stats()["total_updates"] == 1
        assert all(torch.equal(undone[k], v) for k, v in weights_of(again).items())
        assert again.get_stats()["pending_examples"] == 0  # the undone examples stay out


def test_a_removed_example_is_not_brought_back_by_an_undo(tmp_path: Path) -> None:
    with make_learner(tmp_path, **_cfg()) as learner:
        keep = [TrainingExample(q, t) for q, t in FACTS]
        for ex in keep:
            learner.add_example(ex)
        learner.force_update()
        learner.add_example(TrainingExample(*MORE[0]))
        learner.remove_example(keep[0].id)  # taken out of replay before the next update
        learner.force_update()
        learner.undo_last_update()
        replay = {e.seq for e in learner._worker._replay}
        assert learner.store.get(keep[0].id).seq not in replay


def test_reset_to_base_returns_to_the_loaded_weights(tmp_path: Path) -> None:
    with make_learner(tmp_path, **_cfg()) as learner:
        base = weights_of(learner)
        _teach(learner, FACTS)
        _teach(learner, MORE)
        assert learner.reset_to_base()["optimizer"] == "reset"
        assert all(torch.equal(base[k], v) for k, v in weights_of(learner).items())
        assert learner._worker.trainer.optimizer.state_dict()["state"] == {}
        with pytest.raises(LearnerError, match="nothing to undo"):
            learner.undo_last_update()


def test_undo_can_be_turned_off(tmp_path: Path) -> None:
    with make_learner(tmp_path, **_cfg(keep_undo=False)) as learner:
        _teach(learner, FACTS)
        with pytest.raises(LearnerError, match="keep_undo"):
            learner.undo_last_update()
        with pytest.raises(LearnerError, match="keep_undo"):
            learner.reset_to_base()


def test_an_undo_point_copies_nothing_when_the_weights_did_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edits kept in the edit memory change no weight: after the first, an undo point finds
    its copies current and copies nothing, and the undo still restores exactly."""
    copies: list[int] = []
    copy_ = _undo.UndoPoint._copy
    monkeypatch.setattr(
        _undo.UndoPoint, "_copy", lambda self, *a: copies.append(1) or copy_(self, *a)
    )
    with make_learner(tmp_path, **_cfg(update_method="edit")) as learner:
        _teach(learner, FACTS)
        weights, memory = weights_of(learner), learner.model.edit_memory
        _teach(learner, MORE)
        assert len(copies) == 1 and memory is not None
        assert len(learner.model.edit_memory or ()) > len(memory)
        learner.undo_last_update()
        assert all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        back = learner.model.edit_memory
        assert back is not None and len(back) == len(memory)
        assert torch.equal(back.directions, memory.directions)
        assert torch.equal(back.values, memory.values)


@pytest.mark.parametrize("how", ["in place", "new storage", "new model"])
def test_weights_changed_since_the_last_copy_are_what_undo_restores(
    tmp_path: Path, how: str
) -> None:
    with make_learner(tmp_path, **_cfg(update_method="edit")) as learner:
        _teach(learner, FACTS)
        trainer = learner._worker.trainer
        if how == "new model":  # the same layout, anew: same sizes, maybe the same addresses
            fresh = copy.deepcopy(trainer.model)
            with torch.no_grad():
                for p in fresh.parameters():
                    p.add_(0.5)
            trainer.model = fresh
        else:
            p = next(trainer.model.parameters())
            with torch.no_grad():  # the worker waits for a command: nothing else touches them
                if how == "in place":
                    p.add_(0.5)
                else:
                    p.data = p.data + 0.5
        model = trainer.model
        changed = {k: v.clone() for k, v in model.state_dict().items()}
        _teach(learner, MORE)
        learner.undo_last_update()
        now = model.state_dict()
        assert all(torch.equal(changed[k], now[k]) for k in changed)


def test_a_tensor_without_a_version_counter_is_copied_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copies: list[int] = []
    copy_ = _undo.UndoPoint._copy
    monkeypatch.setattr(
        _undo.UndoPoint, "_copy", lambda self, *a: copies.append(1) or copy_(self, *a)
    )
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    point = _undo.UndoPoint()

    def update_writing_nothing() -> None:
        point.save(model, optimizer, {})  # the copy waits for the update's first write...
        point.settle(ok=True)  # ...and is taken here, as nothing wrote

    update_writing_nothing()
    update_writing_nothing()
    assert len(copies) == 1  # nothing changed: the copies stand
    with torch.inference_mode():
        table = torch.randn(4)
    model.register_buffer("table", table)  # changed in inference mode: no version to tell
    update_writing_nothing()
    update_writing_nothing()
    assert len(copies) == 3


def test_a_fused_step_keeps_the_undo_point_by_swapping_storage_not_copying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the optimizer has state, FusedAdamW writes each update into the undo point's
    copies and swaps them with the live tensors: no copy, and the undo is still bit for bit
    (weights, moments, step counters), and training after it goes on from the same state."""
    copies: list[int] = []
    copy_ = _undo.UndoPoint._copy
    monkeypatch.setattr(
        _undo.UndoPoint, "_copy", lambda self, *a: copies.append(1) or copy_(self, *a)
    )
    last = [(f"{a} / {b} =", f" {a // b}") for a, b in ((9, 3), (16, 4), (7, 7), (30, 5))]
    with make_learner(tmp_path, **_cfg(update_method="finetune")) as learner:
        optimizer = learner._worker.trainer.optimizer
        _teach(learner, FACTS)
        _teach(learner, MORE)
        assert len(copies) == 2  # the first two: no copies yet, then no moments in them
        weights, opt = weights_of(learner), _optimizer_state(learner)
        params = list(learner._worker.trainer.model.parameters())
        storage = [p.data_ptr() for p in params]
        _teach(learner, LATER)
        assert len(copies) == 2  # swapped, not copied
        assert all(p.data_ptr() != s for p, s in zip(params, storage, strict=True))
        assert not all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        learner.undo_last_update()
        assert all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        assert same(opt, _optimizer_state(learner))
        assert optimizer is learner._worker.trainer.optimizer
        _teach(learner, last)
        after = weights_of(learner)
    with make_learner(tmp_path / "b", **_cfg(update_method="finetune")) as b:
        for pairs in (FACTS, MORE, last):
            _teach(b, pairs)
        assert all(torch.equal(after[k], v) for k, v in weights_of(b).items())


def test_an_update_that_writes_behind_the_undo_points_back_is_refused() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    point = _undo.UndoPoint()
    point.save(model, optimizer, {})
    with torch.no_grad():
        model.weight.add_(1.0)  # not through point.step or after point.ensure
    with pytest.raises(RuntimeError, match="before the undo point kept them"):
        point.settle(ok=True)
    assert not point.valid
