"""Edits kept in the edit memory (``edit_store="memory"``) through the learner: the weights stay,
only tokens of the taught word are computed differently, and the memory travels with
checkpoints, undo and snapshots. What it teaches a real model: the SmolLM2 slow tests and
bench/efficacy.py."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.learner.helpers import make_learner, weights_of
from workbench.formats import load_model
from workbench.learner import OnlineLearner, TrainingExample
from workbench.models import KVCache
from workbench.models.fast import FastTransformer
from workbench.models.memory import EditMemory

LAYER = 1


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(7))


def _teach(learner: OnlineLearner, word: str, answer: str) -> None:
    for q in (f"The {word} is", f"Q: what is the {word}? A:", f"A {word} means"):
        learner.add_example(TrainingExample(q, answer))
    learner.force_update()


def _memory(learner: OnlineLearner) -> EditMemory | None:
    with learner.reading() as snap:
        return snap.model.edit_memory


def _keys(learner: OnlineLearner, text: str) -> torch.Tensor:
    with learner.reading() as snap, torch.no_grad():
        m = snap.model
        ids = torch.tensor([snap.tokenizer.encode(text)])
        x, rope = m.embed(ids)
        x = m.run_blocks(x, rope, 0, LAYER)
        block = m.blocks[LAYER]
        return block.mlp.keys(block.mlp_norm(block.attend(x, rope, None, LAYER)))[0]


def _logits(learner: OnlineLearner, text: str) -> torch.Tensor:
    with learner.reading() as snap, torch.no_grad():
        return snap.model(torch.tensor([snap.tokenizer.encode(text)]))[0]


def _learner(tmp_path: Path, **config: object) -> OnlineLearner:
    return make_learner(
        tmp_path,
        update_frequency=100,
        update_method="edit",
        edit_layer=LAYER,
        edit_clamp=50.0,
        **config,  # type: ignore[arg-type]
    )


def test_a_memory_edit_changes_no_weight_and_no_unmatched_token(tmp_path: Path) -> None:
    rng = random.Random(21)
    word = _word(rng)
    others = [" ".join(_word(rng) for _ in range(4)) for _ in range(6)]
    with _learner(tmp_path) as learner:
        weights = weights_of(learner)
        before = {t: _logits(learner, t) for t in others}
        loss0 = learner.score(f"The {word} is", " Q7")["loss"]
        _teach(learner, word, " Q7")
        mem = _memory(learner)
        assert mem is not None and len(mem) >= 1 and mem.layer == LAYER
        assert learner.describe()["edit_memory"] == len(mem)
        assert all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
        assert learner.score(f"The {word} is", " Q7")["loss"] < loss0 - 0.05
        checked = 0
        for text in others:
            hit = (F.normalize(_keys(learner, text), dim=-1) @ mem.directions.T).max(-1).values
            first = (
                int((hit >= mem.threshold).nonzero()[0])
                if bool((hit >= mem.threshold).any())
                else None
            )
            # causal: every position before the first matching token is computed as before
            upto = len(hit) if first is None else first
            assert torch.equal(_logits(learner, text)[:upto], before[text][:upto])
            checked += upto
        assert checked >= 3 * len(others)


def test_the_memory_survives_a_checkpoint_and_a_custom_save(tmp_path: Path) -> None:
    rng = random.Random(22)
    word = _word(rng)
    with _learner(tmp_path / "a", checkpoint_frequency=1) as learner:
        _teach(learner, word, " Z9")
        mem = _memory(learner)
        assert mem is not None
        taught = _logits(learner, f"The {word} is")
        saved = learner.save_weights(tmp_path / "m.mwb", format="custom")
    with _learner(tmp_path / "a", checkpoint_frequency=1) as resumed:  # resumes the session
        back = _memory(resumed)
        assert back is not None and len(back) == len(mem)
        assert torch.equal(back.values, mem.values) and torch.equal(back.keys, mem.keys)
        assert torch.equal(_logits(resumed, f"The {word} is"), taught)
    with _learner(tmp_path / "b") as other:
        assert _memory(other) is None
        other.load_weights(saved)
        back = _memory(other)
        assert back is not None and torch.equal(back.directions, mem.directions)
        assert torch.equal(_logits(other, f"The {word} is"), taught)


def _target_loss(model: torch.nn.Module, ids: list[int], n_target: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, -n_target - 1 : -1]
    return float(F.cross_entropy(logits, torch.tensor(ids[-n_target:])))


def test_weight_files_get_the_memory_merged_in_and_a_load_clears_it(tmp_path: Path) -> None:
    rng = random.Random(23)
    with _learner(tmp_path) as learner:
        plain = learner.save_weights(tmp_path / "plain.safetensors", format="safetensors")
        word = _word(rng)
        _teach(learner, word, " K4")
        memory = _memory(learner)
        assert memory is not None and len(memory)
        weights = weights_of(learner)
        tok = learner.tokenizer
        ids = tok.encode(f"The {word} is") + tok.encode(" K4")
        down = f"blocks.{LAYER}.mlp.down.weight"
        base, _ = load_model(plain)
        for fmt in ("safetensors", "gguf", "binary"):
            path = learner.save_weights(tmp_path / f"taught.{fmt}", format=fmt)
            # the learner's own model is as it was: memory and weights, bit for bit
            assert _memory(learner) is memory
            assert all(torch.equal(weights[k], v) for k, v in weights_of(learner).items())
            merged, _ = load_model(path)
            assert merged.edit_memory is None
            state = merged.state_dict()
            assert [k for k in state if not torch.equal(state[k], weights[k])] == [down]
            # the write maps each entry's key to (about) its residual ...
            dw = state[down] - weights[down]
            got = memory.keys @ dw.T
            cos = F.cosine_similarity(got, memory.values, dim=-1)
            ratio = got.norm(dim=-1) / memory.values.norm(dim=-1)
            assert bool((cos > 0.9).all()) and bool(((ratio > 0.8) & (ratio < 1.25)).all())
            # ... so the file moves toward what was taught (a random model routes little from
            # the word to the answer: what a merge keeps of a real fact is bench/efficacy.py's)
            assert _target_loss(merged, ids, 2) < _target_loss(base, ids, 2)
        learner.load_weights(plain)
        assert _memory(learner) is None


def test_undo_and_reset_bring_the_memory_back(tmp_path: Path) -> None:
    rng = random.Random(24)
    with _learner(tmp_path) as learner:
        _teach(learner, _word(rng), " A1")
        first = _memory(learner)
        _teach(learner, _word(rng), " B2")
        assert _memory(learner) is not first
        learner.undo_last_update()
        back = _memory(learner)
        assert first is not None and back is not None and len(back) == len(first)
        assert all(
            torch.equal(a, b)
            for a, b in zip(back.tensors().values(), first.tensors().values(), strict=True)
        )
        learner.reset_to_base()
        assert _memory(learner) is None


def test_the_fast_copy_answers_taught_facts_from_the_memory(tmp_path: Path) -> None:
    rng = random.Random(25)
    word = _word(rng)
    with _learner(tmp_path, inference="fast") as learner:
        loss0 = learner.score(f"The {word} is", " C3")["loss"]
        _teach(learner, word, " C3")
        assert learner.score(f"The {word} is", " C3")["loss"] < loss0 - 0.05
        assert learner.describe()["inference"] == "fast"
        with learner.reading() as snap:
            assert snap.fast is not None and snap.fast.memory is snap.model.edit_memory
            assert snap.fast.memory is not None and len(snap.fast.memory)
        for prompt in (f"The {word} is", f"Q: what is the {word}? A:"):
            with learner.reading() as snap, torch.inference_mode():
                assert snap.fast is not None
                ids = torch.tensor([snap.tokenizer.encode(prompt)])
                want = snap.model(ids)[0].log_softmax(-1)  # float32, memory applied
                got = _token_by_token(snap.fast, ids)
                snap.fast.memory = None
                bare = _token_by_token(snap.fast, ids)
                snap.fast.memory = snap.model.edit_memory
            moved = (bare - want).abs().amax(-1)  # where the memory changes the answer
            assert float(moved.max()) > 0.5
            # the fast copy (int8 weights) follows float32 there, far closer than without it
            assert (got - want).abs().amax(-1).max() < 0.1 * moved.max()


def _token_by_token(fast: FastTransformer, ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(T, V)`` of ``ids`` ``(1, T)``, every token after the first one
    call of the decode kernel."""
    cache = KVCache(fast.cfg, 1, ids.shape[1], torch.device("cpu"), torch.float32)
    out = [fast(ids[:, :1], cache)]
    out += [fast(ids[:, t : t + 1], cache) for t in range(1, ids.shape[1])]
    return torch.cat(out, dim=1)[0].log_softmax(-1)


@pytest.mark.slow
def test_an_offline_run_starts_from_the_weights_and_its_adoption_drops_the_memory(
    tmp_path: Path,
) -> None:
    """The offline run's start file is a weight file, which cannot hold the memory: it is left
    out (the run trains on the examples it was taught with), and adopting the run's weights
    drops it."""
    rng = random.Random(26)
    with _learner(tmp_path) as learner:
        _teach(learner, _word(rng), " D5")
        assert _memory(learner) is not None
        weights = weights_of(learner)
        job = learner.train_offline(steps=2, global_batch=2, adopt=False)
        assert job.wait(180) == {"output": str(job.output)}
        start = load_model(job.run_dir / "start.safetensors")[0].state_dict()
        assert all(torch.equal(start[k], v) for k, v in weights.items())
        assert _memory(learner) is not None  # not adopted yet: still taught by the memory
        job.adopt()
        assert _memory(learner) is None
