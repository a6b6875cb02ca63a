"""Label scores with a shared KV cache equal full passes; calibration does what it claims."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import pytest
import torch

from tests.labeling.helpers import make_learner, random_texts
from workbench.labeling import LabelingError, LabelingSession, PromptFormat, calibrate
from workbench.labeling.scoring import (
    match_prior,
    mean_distribution,
    reference_scores,
    score_labels,
)
from workbench.learner import OnlineLearner


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("chat", [False, True])
def test_cached_scores_equal_full_passes_on_random_inputs(
    tmp_path: Path, preset: str, chat: bool
) -> None:
    rng = random.Random(hash((preset, chat)) & 0xFFFF)
    learner = make_learner(tmp_path, preset, chat=chat)
    try:
        model, tok = learner.model, learner.tokenizer
        for _ in range(6):
            k = rng.randint(2, 5)
            verbs = tuple(dict.fromkeys(random_texts(rng, k + 3, 1, 12)))[:k]
            if len(verbs) < 2:
                continue
            fmt = PromptFormat("Q: {text} [{labels}] A:", verbs, chat)
            context, tails = fmt.encode(tok, random_texts(rng, 1, 5, 80)[0], 512)
            got = score_labels(model, context, tails)
            want = reference_scores(model, context, tails)
            assert len({len(t) for t in tails}) > 1 or len(tails[0]) >= 1
            assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
            assert all(s < 0 for s in got)
    finally:
        learner.close()


def test_cached_scores_equal_full_passes_on_the_int8_copy(tmp_path: Path) -> None:
    # The learner's fast inference copy (what the session scores on when it has one) shares
    # the KV cache layout: the cached batch must agree with its own full passes.
    from workbench.models.fast import FastTransformer

    rng = random.Random(11)
    learner = make_learner(tmp_path, chat=True)
    try:
        fast = FastTransformer(learner.model)
        fmt = PromptFormat("Review: {text}\nOne of {labels}.", ("good", "bad", "so-so"), True)
        for text in random_texts(rng, 4, 5, 60):
            context, tails = fmt.encode(learner.tokenizer, text, 512)
            got = score_labels(fast, context, tails)
            # a full pass of 16+ tokens runs the copy's bfloat16 prefill, the cached labels its
            # int8 one-token path: they agree to ~4e-4 relative, not to float32's 1e-4
            want = reference_scores(fast, context, tails)
            assert got == pytest.approx(want, rel=2e-3, abs=1e-3)
    finally:
        learner.close()


def test_scored_tokens_are_the_trained_tokens(learner: OnlineLearner) -> None:
    # The tails scored for a label are the target tokens of that label's training example.
    fmt = PromptFormat("T: {text} L:", ("yes", "no"), chat=False)
    context, tails = fmt.encode(learner.tokenizer, "hello", 256)
    tok = learner.tokenizer
    assert tok.decode(context) == "T: hello L:"
    assert tails[0] == [*tok.encode(" yes"), tok.eos_id]
    # log P(" yes" + EOS | prompt) from the learner's own scorer: loss * tokens
    s = learner.score("T: hello L:", " yes")
    assert score_labels(learner.model, context, tails)[0] == pytest.approx(
        -s["loss"] * s["tokens"], rel=1e-4
    )


def test_calibrate_divides_by_the_prior() -> None:
    rng = random.Random(1)
    for _ in range(20):
        k = rng.randint(2, 6)
        scores = [rng.uniform(-20, -1) for _ in range(k)]
        prior = [rng.uniform(0.05, 1) for _ in range(k)]
        z = sum(prior)
        prior = [p / z for p in prior]
        soft = [math.exp(s) for s in scores]
        want = [s / p for s, p in zip(soft, prior, strict=True)]
        zw = sum(want)
        got = calibrate(scores, prior)
        assert got == pytest.approx([w / zw for w in want], rel=1e-9)
        plain = calibrate(scores, None)
        assert plain == pytest.approx([s / sum(soft) for s in soft], rel=1e-9)
    rows = [[rng.uniform(-9, -1) for _ in range(3)] for _ in range(7)]
    want_mean = torch.softmax(torch.tensor(rows, dtype=torch.float64), 1).mean(0).tolist()
    assert mean_distribution(rows) == pytest.approx(want_mean)


def test_contextual_calibration_makes_the_content_free_input_uniform(
    learner: OnlineLearner,
) -> None:
    s = LabelingSession(learner, ["some text", "other"], ["good", "bad", "meh"])
    cf = s.suggest("N/A")
    assert list(cf.scores.values()) == pytest.approx([1 / 3] * 3, abs=1e-9)
    raw = calibrate(list(cf.raw.values()), None)
    assert max(raw) - min(raw) > 1e-3  # the raw scores were not uniform to begin with
    item = s.suggest(s.items[0].id)
    assert sum(item.scores.values()) == pytest.approx(1.0)
    assert item.label == max(item.scores, key=item.scores.__getitem__)


def test_batch_calibration_centres_the_pool(learner: OnlineLearner) -> None:
    rng = random.Random(3)
    texts = random_texts(rng, 20)
    s = LabelingSession(learner, texts, ["alpha", "beta"], calibration="batch")
    for i in s.items:  # once the whole pool is scored, the prior is its mean
        s.suggest(i.id)
    sugs = [s.suggest(i.id) for i in s.items]
    raw = [list(x.raw.values()) for x in sugs]
    prior = mean_distribution(raw)
    for x, r in zip(sugs, raw, strict=True):
        assert list(x.scores.values()) == pytest.approx(calibrate(r, prior))


def test_match_prior_moves_the_pool_to_the_answer_frequencies() -> None:
    rng = random.Random(5)
    for _ in range(20):
        k = rng.randint(2, 5)
        mean = [rng.uniform(0.05, 1.0) for _ in range(k)]
        mean = [m / sum(mean) for m in mean]
        counts = [rng.randint(0, 30) for _ in range(k)]
        raw = [rng.uniform(-8, 0) for _ in range(k)]
        soft = torch.softmax(torch.tensor(raw, dtype=torch.float64), 0).tolist()
        freq = [(c + 1) / (sum(counts) + k) for c in counts]
        want = [p * f / m for p, f, m in zip(soft, freq, mean, strict=True)]
        want = [w / sum(want) for w in want]
        assert calibrate(raw, match_prior(mean, counts)) == pytest.approx(want)
        # before any answer it is batch calibration
        assert calibrate(raw, match_prior(mean, [0] * k)) == pytest.approx(calibrate(raw, mean))
    with pytest.raises(LabelingError, match="one non-negative count per label"):
        match_prior([0.5, 0.5], [1])


def test_answers_calibration_follows_the_answered_labels(tmp_path: Path) -> None:
    rng = random.Random(6)
    learner = make_learner(tmp_path, enabled=False)
    try:
        texts = random_texts(rng, 24)
        s = LabelingSession(learner, texts, ["alpha", "beta"], calibration="answers", seed=0)
        before = statistics.fmean(s.suggest(i.id).scores["alpha"] for i in s.items[8:])
        for item in s.items[:8]:  # every answer says alpha
            s.answer(item.id, "alpha")
        after = statistics.fmean(s.suggest(i.id).scores["alpha"] for i in s.items[8:])
        assert after > before + 0.2  # the weights did not change: only the prior did
        raw = list(s.suggest(s.items[9].id).raw.values())
        with s._cache_lock:
            rows = [r for _, r in s._raw.values()]
        prior = match_prior(mean_distribution(rows), [8, 0])
        assert list(s.suggest(s.items[9].id).scores.values()) == pytest.approx(
            calibrate(raw, prior)
        )
    finally:
        learner.close()


def test_prompt_template_errors_say_the_fix() -> None:
    with pytest.raises(LabelingError, match=r"must contain \{text\}"):
        PromptFormat("no field", ("a", "b"), False)
    with pytest.raises(LabelingError, match="unknown field"):
        PromptFormat("{text} {oops}", ("a", "b"), False)


def test_reading_holds_one_published_snapshot_across_an_update(tmp_path: Path) -> None:
    """``learner.reading()`` (what the session scores through): a publish during the block
    leaves the held weights and version as they were; the next block sees the new ones."""
    import time

    from workbench.learner import TrainingExample

    learner = make_learner(tmp_path, enabled=True, update_frequency=1000, batch_size=1)
    threads = torch.get_num_threads()
    try:
        deadline = time.monotonic() + 30  # the worker waiting for work: readers keep their count
        while learner._publisher.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        with learner.reading() as snap:
            assert torch.get_num_threads() == threads and torch.is_inference_mode_enabled()
            before = [p.detach().clone() for p in snap.model.parameters()]
            version = snap.version
            learner.add_example(TrainingExample("the sky is", " green"))
            learner.force_update()
            assert snap.version == version
            assert all(
                torch.equal(a, b) for a, b in zip(before, snap.model.parameters(), strict=True)
            )
        assert torch.get_num_threads() == threads
        with learner.reading() as fresh:
            assert fresh.version > version
            assert not all(
                torch.equal(a, b) for a, b in zip(before, fresh.model.parameters(), strict=True)
            )
    finally:
        learner.close()
