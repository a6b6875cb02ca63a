"""The labeling session: acquisition orders, answers become examples, undo, resume, export."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
import torch

from tests.labeling.helpers import make_learner, random_texts
from workbench.labeling import LabelingError, LabelingSession, entropy, margin
from workbench.labeling.acquisition import Order, pick
from workbench.learner import OnlineLearner

LABELS = ["positive", "negative", "neutral"]


def weights(learner: OnlineLearner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.model.state_dict().items()}


def test_pick_matches_brute_force_on_random_distributions() -> None:
    rng = random.Random(0)
    for _ in range(50):
        k = rng.randint(2, 6)
        probs = []
        for _ in range(rng.randint(1, 12)):
            row = [rng.random() for _ in range(k)]
            probs.append([x / sum(row) for x in row])
        margins = [sorted(p)[-1] - sorted(p)[-2] for p in probs]
        assert margins[pick("uncertainty", probs, rng)] == min(margins)
        ents = [-sum(x * torch.tensor(x).log().item() for x in p) for p in probs]
        assert ents[pick("entropy", probs, rng)] == pytest.approx(max(ents))
        assert pick("sequential", probs, rng) == 0
    seen = {pick("random", [[1.0]] * 5, random.Random(s)) for s in range(40)}
    assert seen == set(range(5))
    assert margin([0.7, 0.2, 0.1]) == pytest.approx(0.5)
    assert entropy([0.5, 0.5]) == pytest.approx(0.6931, abs=1e-4)


@pytest.mark.parametrize("order", ["uncertainty", "entropy"])
def test_next_picks_by_the_order_over_the_scored_pool(learner: OnlineLearner, order: Order) -> None:
    texts = random_texts(random.Random(5), 10)
    s = LabelingSession(
        learner,
        texts,
        LABELS,
        order=order,
        random_share=0.0,
        candidates=100,
    )
    all_s = {i.id: s.suggest(i.id) for i in s.items}
    chosen = s.next()
    assert chosen is not None
    if order == "uncertainty":
        assert chosen.margin == min(x.margin for x in all_s.values())
    else:
        ents = {k: entropy(list(v.scores.values())) for k, v in all_s.items()}
        assert ents[chosen.item_id] == pytest.approx(max(ents.values()))


def test_sequential_and_random_orders_cover_the_items(learner: OnlineLearner) -> None:
    texts = [f"item number {i}" for i in range(6)]
    seq = LabelingSession(learner, texts, LABELS, order="sequential", name="seq")
    got = []
    while (x := seq.next()) is not None:
        got.append(x.text)
        seq.answer(x.item_id, "skip")
    assert got == texts
    rnd = LabelingSession(learner, texts, LABELS, order="random", name="rnd", seed=3)
    order = []
    while (x := rnd.next()) is not None:
        order.append(x.text)
        rnd.answer(x.item_id, "skip")
    assert sorted(order) == sorted(texts) and order != texts


def test_answer_is_committed_and_becomes_a_weighted_example(
    tmp_path: Path, learner: OnlineLearner
) -> None:
    s = LabelingSession(learner, ["fine drug", "awful drug"], LABELS, order="sequential")
    first = s.next()
    assert first is not None
    out = s.answer(first.item_id, "negative", weight=2.5)
    assert out["label"] == "negative" and out["model_label"] == first.label
    # committed: another connection sees the row now
    db = sqlite3.connect(tmp_path / "examples.sqlite")
    rows = db.execute("SELECT item_id, label, weight FROM label_answers").fetchall()
    assert rows == [(first.item_id, "negative", 2.5)]
    ex = learner.recent_examples(5)[-1]
    assert ex.input == s.format.prompt("fine drug") and ex.target == " negative"
    assert ex.weight == 2.5
    # accept takes the suggestion; skip teaches nothing
    second = s.next()
    assert second is not None
    assert s.answer(second.item_id, "accept")["label"] == second.label
    assert len(learner.recent_examples(10)) == 2
    assert s.stats()["remaining"] == 0


def test_answers_move_the_next_suggestion(tmp_path: Path) -> None:
    learner = make_learner(tmp_path, update_frequency=100)
    try:
        s = LabelingSession(learner, ["the pills helped a lot"], ["good", "bad"])
        item = s.items[0]
        before = s.suggest(item.id)
        target = "bad" if before.label == "good" else "good"
        s.answer(item.id, target, weight=1.0)
        for _ in range(4):
            learner.force_update()
        after = s.suggest(item.id)
        assert after.version > before.version
        assert after.raw[target] > before.raw[target] + 0.1
        assert after.scores[target] > before.scores[target]
    finally:
        learner.close()


def test_reject_teaches_the_other_of_two_labels(learner: OnlineLearner) -> None:
    s = LabelingSession(learner, ["x y z", "a b c"], ["yes", "no"], order="sequential")
    x = s.next()
    assert x is not None
    out = s.answer(x.item_id, "reject")
    assert out["answer"] == "reject" and out["label"] != x.label and out["agreed"] is False
    s3 = LabelingSession(learner, ["q"], LABELS, name="three")
    assert s3.answer(s3.items[0].id, "reject")["label"] is None


def test_undo_before_any_update_removes_the_example(learner: OnlineLearner) -> None:
    s = LabelingSession(learner, ["one", "two"], LABELS, order="sequential")
    s.answer(s.items[0].id, "neutral")
    out = s.undo()
    assert out["learning"] == "not-trained"
    assert learner.recent_examples(5)[-1].status == "removed"
    assert s.stats()["answered"] == 0 and s.stats()["remaining"] == 2
    with pytest.raises(LabelingError, match="nothing to undo"):
        s.undo()


def test_undo_of_the_last_updates_answer_restores_the_weights(tmp_path: Path) -> None:
    learner = make_learner(tmp_path, update_frequency=100)
    try:
        s = LabelingSession(learner, ["one", "two", "three"], LABELS, order="sequential")
        s.answer(s.items[0].id, "positive")
        learner.force_update()
        w0 = weights(learner)
        s.answer(s.items[1].id, "negative")
        learner.force_update()
        assert any(not torch.equal(w0[k], v) for k, v in weights(learner).items())
        out = s.undo()
        assert out["learning"] == "undone", out
        w1 = weights(learner)
        assert all(torch.equal(w0[k], w1[k]) for k in w0)
        assert learner.get_stats()["total_updates"] == 1
        # an answer learned two updates ago: its example goes, the learning stays, said so
        s.answer(s.items[2].id, "neutral")
        learner.force_update()
        learner.force_update()
        s.undo()  # the neutral one (trained first in the update before last)
        out = s.undo()  # the positive one: updates since it > 1
        assert out["learning"] == "removed" and "stay" in out["message"]
    finally:
        learner.close()


def test_resume_on_the_same_folder_continues(tmp_path: Path) -> None:
    texts = [f"review {i}" for i in range(5)]
    learner = make_learner(tmp_path)
    s = LabelingSession(learner, texts, LABELS, order="sequential")
    for label in ["positive", "negative"]:
        x = s.next()
        assert x is not None
        s.answer(x.item_id, label)
    s.close()
    learner.close()
    learner = make_learner(tmp_path)
    try:
        r = LabelingSession(learner, None, None, order="sequential")
        assert r.labels == tuple(LABELS) and [i.text for i in r.items] == texts
        assert [a.label for a in r.answers()] == ["positive", "negative"]
        x = r.next()
        assert x is not None and x.text == "review 2"
        assert r.reconciled == 0
        with pytest.raises(LabelingError, match="another name"):
            LabelingSession(learner, texts, ["a", "b"])
        more = LabelingSession(learner, [*texts, "review 5"], LABELS)
        assert more.stats()["total"] == 6 and more.stats()["answered"] == 2
    finally:
        learner.close()


def test_export_jsonl_and_pandas(tmp_path: Path, learner: OnlineLearner) -> None:
    s = LabelingSession(learner, ["good pill", "bad pill", "ok pill"], LABELS, order="sequential")
    for value in ["positive", "skip", "accept"]:
        x = s.next()
        assert x is not None
        s.answer(x.item_id, value)
    path = s.export_jsonl(tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["answer"] for r in lines] == ["accept", "skip", "accept"]
    assert lines[0]["text"] == "good pill" and lines[0]["label"] == "positive"
    assert set(lines[0]["scores"]) == set(LABELS)
    assert lines[0]["_input_hash"] != lines[1]["_input_hash"]
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(LabelingError, match="pip install pandas"):
            s.to_pandas()
    else:
        df = s.to_pandas()
        assert list(df["label"][:1]) == ["positive"] and len(df) == 3
    with pytest.raises(LabelingError, match="is a folder"):
        s.export_jsonl(tmp_path)


def test_bad_input_raises_one_error_that_says_the_fix(
    tmp_path: Path, learner: OnlineLearner
) -> None:
    with pytest.raises(LabelingError, match="no items"):
        LabelingSession(learner, [], LABELS)
    with pytest.raises(LabelingError, match="not a file"):
        LabelingSession(learner, tmp_path / "missing.csv", LABELS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(LabelingError, match="line 2 is not JSON"):
        LabelingSession(learner, bad, LABELS)
    with pytest.raises(LabelingError, match="no text field"):
        LabelingSession(learner, [{"body": "x"}], LABELS)
    with pytest.raises(LabelingError, match="answer"):
        LabelingSession(learner, ["a"], ["accept", "b"])
    s = LabelingSession(learner, ["a b"], LABELS)
    with pytest.raises(LabelingError, match="unknown item id"):
        s.answer("nope", "positive")
    with pytest.raises(LabelingError, match="unknown label"):
        s.answer(s.items[0].id, "posit")
    with pytest.raises(LabelingError, match="weight"):
        s.answer(s.items[0].id, "positive", weight=-1)
    with pytest.raises(LabelingError, match="order must be"):
        LabelingSession(learner, ["a"], LABELS, order="best")  # type: ignore[arg-type]
    with pytest.raises(LabelingError, match=r"candidates must be an integer >= 2"):
        LabelingSession(learner, ["a"], LABELS, candidates=1)  # no choice left to rank


def test_items_from_csv_jsonl_and_dataframe(tmp_path: Path) -> None:
    from workbench.labeling import load_items

    csv_path = tmp_path / "items.csv"
    csv_path.write_text('id,review,rating\n7,"good, really",9\n8,bad,1\n')
    items = load_items(csv_path)
    assert [(i.id, i.text, i.meta["rating"]) for i in items] == [
        ("7", "good, really", "9"),
        ("8", "bad", "1"),
    ]
    jl = tmp_path / "items.jsonl"
    jl.write_text('{"text": "x"}\n\n{"text": "y", "id": 3}\n')
    assert [(i.text, i.id) for i in load_items(jl)][1] == ("y", "3")
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"sentence": ["p", "q"], "n": [1, 2]})
    assert [i.text for i in load_items(df)] == ["p", "q"]


def test_resume_sends_an_answer_the_learner_never_got(tmp_path: Path) -> None:
    # A crash between the answer's commit and add_example: the answer is on disk, its
    # example is not; the next session on the folder hands it to the learner.
    learner = make_learner(tmp_path)
    s = LabelingSession(learner, ["first", "second"], LABELS, order="sequential")
    real = learner.add_example

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    learner.add_example = crash  # type: ignore[method-assign,assignment]
    with pytest.raises(KeyboardInterrupt):
        s.answer(s.items[0].id, "negative")
    learner.add_example = real  # type: ignore[method-assign]
    assert learner.recent_examples(5) == []
    s.close()
    r = LabelingSession(learner, None, None)
    assert r.reconciled == 1
    (ex,) = learner.recent_examples(5)
    assert ex.id == r.answers()[0].example_id and ex.target == " negative"
    assert LabelingSession(learner, None, None, name="labeling").reconciled == 0
    learner.close()


@pytest.fixture
def score_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per forward pass the session makes (each call of its ``score_labels``)."""
    import workbench.labeling.session as session_module

    calls: list[int] = []
    real = session_module.score_labels

    def counted(*args: object, **kwargs: object) -> list[float]:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(session_module, "score_labels", counted)
    return calls


def test_next_costs_a_bounded_number_of_forward_passes(
    tmp_path: Path, score_calls: list[int]
) -> None:
    calls = score_calls
    learner = make_learner(tmp_path, update_frequency=100)
    try:
        texts = random_texts(random.Random(9), 30)
        s = LabelingSession(learner, texts, LABELS, candidates=2, random_share=0.0)
        for _ in range(4):
            calls.clear()
            x = s.next()
            assert x is not None
            # candidates + the chosen one afresh + the content-free input once per version
            assert len(calls) <= 2 + 1 + 1
            s.answer(x.item_id, "positive")
            learner.force_update()
        assert len(s._raw) >= 8  # the ranking pool grows by `candidates` per call
    finally:
        learner.close()


def test_next_without_rescore_shows_cached_scores_then_suggest_freshens(
    tmp_path: Path, score_calls: list[int]
) -> None:
    """The panel's path: ``next(rescore=False)`` makes no forward pass once items are scored,
    picks the smallest margin among the cached scores and says their version; ``suggest``
    brings the current version's scores, and ``answer`` records those; ``prefetch`` scores
    candidates and stops when asked."""
    calls = score_calls
    learner = make_learner(tmp_path, update_frequency=100)
    try:
        texts = random_texts(random.Random(11), 20)
        s = LabelingSession(learner, texts, LABELS, candidates=3, random_share=0.0, seed=1)
        x = s.next()
        assert x is not None
        s.answer(x.item_id, "negative")
        learner.force_update()
        current = int(learner.get_stats()["version"])
        assert x.version < current
        assert s.prefetch(stop=lambda: True) == 0
        calls.clear()
        assert s.prefetch(2) == 2 and len(calls) == 2  # raw scores only: no prior needed yet
        calls.clear()
        y = s.next(rescore=False)
        assert y is not None and calls == []
        cached = [s.suggest(i, cached=True) for i in s._raw if i != x.item_id]
        assert calls == [] and y.margin == min(c.margin for c in cached)
        assert y.version == s._raw[y.item_id][0]
        fresh = s.suggest(y.item_id)
        assert fresh.version == current
        row = s.answer(y.item_id, "positive")
        assert row["model_label"] == fresh.label
        assert s.answers()[-1].model_version == current
    finally:
        learner.close()
