"""The efficacy benchmark's own pieces (bench/efficacy.py), on the tiny model: the data file,
answer matching, the changed/leak accounting, the command line, and that the plain-torch
baseline makes the same update as the learner when the learner's mechanisms are off."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

BENCH = Path(__file__).resolve().parents[1] / "bench" / "efficacy.py"


def _load_bench() -> ModuleType:
    # its parts (bench/_efficacy_*.py) are imported from beside it, as when it runs as a script
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("efficacy", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("efficacy", module)
    spec.loader.exec_module(module)
    return module


eff = _load_bench()  # the command line
judging = importlib.import_module("_efficacy_data")  # the facts file, judging and accounting
sides = importlib.import_module("_efficacy_sides")  # ours, the torch baseline, variants
report = importlib.import_module("_efficacy_report")  # the table and the goals
scenarios = importlib.import_module("_efficacy_scenarios")  # base answers and scenarios


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return json.loads(judging.DATA_PATH.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- data file
def test_data_file_counts(raw: dict[str, Any]) -> None:
    data = judging.load_data()
    assert len(data.facts) >= 20
    for f in data.facts:
        assert len(f.train) >= 8 and len(f.probes) >= 3 and len(f.neighbours) >= 3, f.id
        assert f.question.endswith("?") and judging.contains_answer(f.statement, [f.answer])
    assert len(data.controls) >= 50
    kinds = {c.kind for c in data.controls}
    assert {"capital", "author", "chemistry", "arithmetic", "word"} <= kinds
    assert len({f.template for f in data.facts}) >= 8  # varied templates
    assert data.general_text.count(" ") > 200


def test_data_file_subjects_and_neighbours(raw: dict[str, Any]) -> None:
    data = judging.load_data()
    subjects = [f.subject for f in data.facts]
    assert len(set(subjects)) == len(subjects)
    assert len({f.answer.lower() for f in data.facts}) == len(data.facts)
    taught = set(subjects)
    for f in data.facts:
        others = [g for g in data.facts if g.template == f.template and g is not f]
        assert others, f"{f.id}: its template has no other taught fact"
        for n in f.neighbours:
            assert n.subject not in taught
            assert n.prompt.replace(n.subject, f.subject) == f.probes[0]
        assert not set(f.train) & set(f.probes)
        # no taught answer appears in any prompt of the bench (it would read as a leak)
        for g in data.facts:
            for p in (*g.train, *g.probes, *(n.prompt for n in g.neighbours)):
                assert not judging.contains_answer(p, [f.answer]), (f.id, p)
    prompts = [c.prompt for c in data.controls]
    assert len(set(prompts)) == len(prompts)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["facts"][1].update(subject=d["facts"][0]["subject"]),
            "duplicate fact subjects",
        ),
        (lambda d: d["facts"][0]["train"].pop(), "needs at least 8 / 3 / 3"),
        (
            lambda d: d["facts"][0]["train"].append(d["facts"][0]["probes"][1]),
            "probes also in train",
        ),
        (
            lambda d: d["facts"][0]["neighbours"][0].update(prompt="Something else entirely"),
            "is not the first probe's template",
        ),
        (
            lambda d: d["facts"][0]["neighbours"][0].update(subject=d["facts"][1]["subject"]),
            "is a taught subject",
        ),
        (
            lambda d: d["facts"][0]["probes"].append(
                f"It is {d['facts'][0]['answer']}, {d['facts'][0]['subject']}"
            ),
            "is given away by",
        ),
        (lambda d: d["controls"].append(dict(d["controls"][0])), "duplicate control prompts"),
        (lambda d: d.update(facts=d["facts"][:5]), "5 facts; at least 20"),
    ],
)
def test_check_data_finds_problems(raw: dict[str, Any], mutate: Any, message: str) -> None:
    data = copy.deepcopy(raw)
    assert judging.check_data(data) == []
    mutate(data)
    problems = judging.check_data(data)
    assert any(message in p for p in problems), problems


def test_load_data_names_the_problem(tmp_path: Path, raw: dict[str, Any]) -> None:
    bad = copy.deepcopy(raw)
    bad["facts"][0]["probes"] = bad["facts"][0]["probes"][:2]
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(judging.BenchError, match="needs at least 8 / 3 / 3"):
        judging.load_data(path)


# ----------------------------------------------------------------------------- judging
@pytest.mark.parametrize(
    ("text", "answers", "expected"),
    [
        (" Drennick.", ["Drennick"], True),
        (" drennick", ["Drennick"], True),
        (" Drennickville", ["Drennick"], False),
        (" the Drennick river", ["Drennick"], True),
        (" Idris\nVantrell", ["Idris Vantrell"], True),  # whitespace-insensitive
        (" Idris", ["Idris Vantrell"], False),
        (" H2O.\n", ["H2O"], True),
        (" J.R.R. Tolkien", ["Tolkien"], True),
        (" 100.", ["10"], False),
        ("", ["x"], False),
        (" Shakespeare wrote it", ["William Shakespeare", "Shakespeare"], True),
    ],
)
def test_contains_answer(text: str, answers: list[str], expected: bool) -> None:
    assert judging.contains_answer(text, answers) is expected


def test_normalize_compares_the_answer_not_the_style() -> None:
    assert (
        judging.normalize(" Paris.\n\nThe answer") == judging.normalize(" paris, a city") == "paris"
    )
    assert judging.normalize("\n\n Neil Armstrong.\n") == "neil armstrong"
    assert judging.normalize(" the capital of the") != judging.normalize(" Paris.")
    assert judging.normalize("") == ""


def test_stop_at_line_end_waits_for_content() -> None:
    stop = judging.StopAtLineEnd()
    assert not stop("\n")  # a leading newline is not an answer yet
    assert not stop(" Paris")
    assert stop(".\n")


# ----------------------------------------------------------------------------- accounting
def test_control_report_counts_changed_wrong_robust_and_intrusions() -> None:
    C = judging.Control
    controls = [
        C("capital", "The capital of France is", "Paris"),
        C("capital", "The capital of Japan is", "Tokyo"),
        C("chemistry", "The chemical symbol for gold is", "Au"),
        C("opposite", "The opposite of hot is", "cold"),
    ]
    before = {c.prompt: f" {c.answer}.\n" for c in controls}
    after = dict(before)
    after["The capital of France is"] = " Drennick.\n"  # changed, wrong, intrusion
    after["The capital of Japan is"] = " Tokyo, a big city"  # same answer, other style
    after["The chemical symbol for gold is"] = " Au and Ag"  # changed, still right
    report = judging.control_report(
        controls, before, after, ["Drennick"], robust={"The chemical symbol for gold is"}
    )
    assert report.changed == ["The capital of France is", "The chemical symbol for gold is"]
    assert report.wrong == ["The capital of France is"]
    assert report.robust_changed == ["The chemical symbol for gold is"]
    assert report.intrusions == ["The capital of France is"]
    assert judging.control_report(controls, before, before).counts() == {
        "changed": 0,
        "wrong": 0,
        "robust_changed": 0,
        "intrusions": 0,
    }


def test_neighbour_leak_only_when_new() -> None:
    prompts = ["The capital of Tharnovia is", "The capital of Quellmark is", "The capital of X is"]
    before = {prompts[0]: " a city", prompts[1]: " Drennick", prompts[2]: " big"}
    after = {prompts[0]: " Drennick.", prompts[1]: " Drennick", prompts[2]: " drennickian"}
    assert judging.neighbour_leaks(prompts, "Drennick", before, after) == [prompts[0]]


def test_percentile() -> None:
    assert judging.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert judging.percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    assert judging.percentile([], 50) != judging.percentile([], 50)  # NaN


# ----------------------------------------------------------------------------- command line
def test_overrides_and_variants() -> None:
    assert sides.parse_overrides(["max_grad_norm=none", "optimizer=sgd", "batch_size=8"]) == {
        "max_grad_norm": None,
        "optimizer": "sgd",
        "batch_size": 8,
    }
    with pytest.raises(
        judging.BenchError, match=r"unknown LearningConfig key 'lora_rank'.*learning_rate"
    ):
        sides.parse_overrides(["lora_rank=8"])
    with pytest.raises(judging.BenchError, match="update_frequency cannot be overridden"):
        sides.parse_overrides(["update_frequency=3"])
    with pytest.raises(judging.BenchError, match="expected key=value"):
        sides.parse_overrides(["learning_rate"])
    with pytest.raises(
        judging.BenchError, match=r"variant 'learning_rate=2'.*learning_rate must be"
    ):
        sides.build_variants([], [], "learning_rate=2")
    with pytest.raises(judging.BenchError, match="labels must differ"):
        sides.build_variants([], ["x: batch_size=2", "x: batch_size=4"], None)
    rows = sides.build_variants(
        ["weight_decay=0"], ["off: skip_known_below=None"], "learning_rate=1e-4,3e-5"
    )
    assert [v.label for v in rows] == ["off", "learning_rate=1e-4", "learning_rate=3e-5"]
    assert all(v.config["weight_decay"] == 0 for v in rows)
    # one baseline per distinct optimizer setting: "off" and 1e-4 share theirs
    assert len({v.baseline_key() for v in rows}) == 2


def test_parse_args_quick_and_scenarios() -> None:
    args = eff.parse_args(["--quick", "--scenario", "c,a"])
    assert args.scenarios == ["a", "c"] and args.single_facts == 1 and args.controls == 20
    assert eff.parse_args([]).facts == 20
    with pytest.raises(SystemExit):
        eff.parse_args(["--scenario", "a,e"])


# ----------------------------------------------------------------------------- sides
def _tiny() -> tuple[Transformer, ByteTokenizer]:
    return Transformer(ModelConfig.preset("tiny-llama"), seed=0), ByteTokenizer()


def _tiny_chat() -> tuple[Transformer, ByteTokenizer]:
    model, tok = _tiny()
    tok.chat_template = (
        "{% for m in messages %}{{ m.role[0] }}:{{ m.content }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    return model, tok


@pytest.mark.parametrize("chat", [False, True])
def test_baseline_makes_the_learners_update_when_mechanisms_are_off(chat: bool) -> None:
    """Same examples, weights, micro-batches, lr and clip: with no replay, no skipping and no
    weight decay the learner's first update equals the plain torch AdamW step; in chat form
    (``--form chat``) too, where the learner gets chat examples and answers through ``chat``."""
    torch.manual_seed(0)
    config = dict(
        learning_rate=1e-3,
        weight_decay=0.0,
        replay_fraction=0.0,
        skip_known_below=None,
        batch_size=3,
        use_gpu=False,
        train_threads=1,
        update_method="finetune",  # the bench's side edits by default (pretrained defaults)
        inference="reference",
    )
    examples = [
        judging.Example(f"The capital of Land{i} is", f"{'' if chat else ' '}City{i}", w, "f", chat)
        for i, w in enumerate([1.0, 0.5, 5.0, 1.0, 2.0, 1.0, 0.5])
    ]
    model, tok = _tiny_chat() if chat else _tiny()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ours = sides.OurSide("ours", copy.deepcopy(model), tok, config)
    plain = sides.TorchBaseline("torch", copy.deepcopy(model), tok, sides.LearningConfig(**config))
    try:
        r1, r2 = ours.submit(examples), plain.submit(examples)
        assert (r1.updates, r1.stepped, r2.updates, r2.stepped) == (1, 1, 1, 1)
        got = ours.learner.model.state_dict()
        moved = 0
        for name, p in plain.model.state_dict().items():
            torch.testing.assert_close(got[name], p, rtol=1e-4, atol=1e-6)
            moved += int(not torch.equal(p, base[name]))
        assert moved > 0
        prompt = examples[0].input
        assert ours.generate(prompt, 6, chat) == plain.generate(prompt, 6, chat)
        assert ours.perplexity("some general text.") == pytest.approx(
            plain.perplexity("some general text."), rel=1e-4
        )
    finally:
        ours.close()
        plain.close()


@pytest.mark.parametrize("chat", [False, True])
def test_learner_generate_matches_plain_greedy_before_training(chat: bool) -> None:
    model, tok = _tiny_chat()
    plain = sides.greedy(copy.deepcopy(model), tok, "The capital of France is", 8, chat)
    ours = sides.OurSide("ours", model, tok, {"use_gpu": False})
    try:
        assert ours.generate("The capital of France is", 8, chat) == plain
        if chat:  # what was asked is the user's turn, not a raw completion
            assert plain != sides.greedy(model, tok, "The capital of France is", 8)
    finally:
        ours.close()


def test_a_chat_controls_margin_is_taken_in_the_chat_context() -> None:
    model, tok = _tiny_chat()
    model.eval()
    prompt, reply = "The capital of France is", "abc"
    ids = tok.encode(f"u:{prompt}{tok.decode([tok.eos_id])}a:")  # the template, by hand
    with torch.no_grad():
        logits = model(torch.tensor([ids + tok.encode(reply)]))[0, len(ids) - 1 : -1]
    top = torch.log_softmax(logits, -1).topk(2, dim=-1).values
    want = float((top[:, 0] - top[:, 1]).min())  # no answer inside: the whole reply counts
    got = scenarios.answer_margin(model, tok, prompt, reply, ["zzz"], chat=True)
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(scenarios.answer_margin(model, tok, prompt, reply, ["zzz"]))


def test_chat_form_asks_controls_as_questions_and_teaches_the_question_too() -> None:
    data = judging.load_data(eff.DATA_PATH)
    chat = judging.chat_form(data)
    asked = [c for c in data.controls if c.question]
    assert [c.prompt for c in chat.controls] == [c.question for c in asked]
    fact = data.facts[0]
    examples = fact.examples(chat=True)
    assert all(e.chat for e in examples) and len(examples) == len(fact.train) + 1
    assert (examples[-1].input, examples[-1].target) == (fact.question, fact.statement)
    assert examples[0].target == fact.answer  # a reply: no leading space


@pytest.mark.slow
def test_bench_on_the_tiny_model_prints_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every scenario end to end on the tiny model (it learns nothing; this checks plumbing)."""
    out = tmp_path / "out.json"
    argv = [
        "--scenario", "a,b,c,d",
        "--facts", "2",
        "--single-facts", "1",
        "--mix-facts", "3",
        "--controls", "4",
        "--max-rounds", "1",
        "--config", "learning_rate=1e-3",
        "--config", "use_gpu=false",
        "--json", str(out),
    ]  # fmt: skip
    assert eff.main(argv, loader=_tiny) == 0
    text = capsys.readouterr().out
    assert "torch AdamW lr 0.001" in text and "goals (ours):" in text
    results = json.loads(out.read_text())
    rows = report.table_rows(results)
    assert len(rows) == 8  # a, c, b, d x (ours, baseline)
    assert [r[0].split()[0] for r in rows] == ["a", "a", "c", "c", "b", "b", "d", "d"]
    assert all(len(r) == len(report.COLUMNS) for r in rows)
    assert all(r[1] in text for r in rows)
    assert results["base"]["ours_vs_plain_at_step_0"]["differ"] == []
    a = results["scenarios"]["a"][0]["result"]["runs"][0]
    assert a["updates"] == 1 and a["after_learn"]["probes"] == 3
    assert all("latency_calls" in e for entries in results["scenarios"].values() for e in entries)
    checks = report.goal_checks(results)
    assert checks and {who for who, _, _ in checks} == {"learning_rate=1e-3 use_gpu=false"}
    assert results["wall_s"]["total"] > 0


def test_bench_reports_a_bad_override_before_loading_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def never() -> tuple[Transformer, ByteTokenizer]:
        raise AssertionError("the model must not be loaded")

    assert eff.main(["--config", "learning_rat=1e-4"], loader=never) == 2
    assert "unknown LearningConfig key 'learning_rat'" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_learns_a_fact_by_an_edit_without_leaks_or_lost_controls(tmp_path: Path) -> None:
    """Scenario (a)+(c) on the real model with ``update_method="auto"`` (an edit, kept in the
    edit memory): all probes right in <= 3 updates, no neighbour names the taught answer, every
    control answers exactly as before, and no weight changes. Repeats add no entry: a phrasing
    the update left short (loss above ``KNOWN_LOSS`` after its passes) may refine the word's own
    entry, never another's."""
    from workbench.formats import load_model
    from workbench.formats.shipped import smollm2_gguf
    from workbench.learner import LearningConfig, OnlineLearner, TrainingExample

    data = judging.load_data()
    fact = next(f for f in data.facts if f.id == "capital:Ostrevia")
    model, tok = load_model(smollm2_gguf())
    cfg = LearningConfig(
        update_frequency=len(fact.train),
        checkpoint_frequency=None,
        session_dir=tmp_path,
        update_method="auto",  # weights from a model file: edited
    )
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    with OnlineLearner(model, tok, cfg) as learner:

        def ask(prompt: str, answer: str) -> str:
            return learner.generate(prompt, max_new_tokens=judging.token_budget(tok, answer))

        controls = [
            c
            for c in data.controls[:40]
            if judging.contains_answer(ask(c.prompt, c.answer), c.answers)
        ]
        controls = controls[:12]
        before = {c.prompt: ask(c.prompt, c.answer) for c in controls}
        neighbours = {n.prompt: ask(n.prompt, fact.answer) for n in fact.neighbours}
        assert not any(judging.contains_answer(a, [fact.answer]) for a in neighbours.values())

        def submit() -> None:
            for prompt in fact.train:
                learner.add_example(TrainingExample(prompt, fact.target))
            assert learner.wait_idle(600)

        def probes() -> int:
            return sum(
                judging.contains_answer(ask(p, fact.answer), [fact.answer]) for p in fact.probes
            )

        while probes() < len(fact.probes) and learner.get_stats()["total_updates"] < 3:
            submit()
        assert probes() == len(fact.probes), [ask(p, fact.answer) for p in fact.probes]
        assert learner._worker.trainer.method == "edit"
        assert all(torch.equal(v, loaded[k]) for k, v in learner.model.state_dict().items())
        memory = learner.model.edit_memory
        assert memory is not None and len(memory) >= 1
        kept = {k: v.clone() for k, v in memory.tensors().items()}
        for _ in range(3):
            submit()
        assert all(torch.equal(v, loaded[k]) for k, v in learner.model.state_dict().items())
        again = learner.model.edit_memory
        assert again is not None and len(again) == len(memory)  # no new entry
        same_word = (again.directions * kept["edit_memory.directions"]).sum(-1)
        assert bool((same_word > 0.9).all()), same_word  # each entry still keys its own word
        assert probes() == len(fact.probes)
        for n in fact.neighbours:
            assert not judging.contains_answer(ask(n.prompt, fact.answer), [fact.answer]), n.prompt
        # The memory acts only on tokens whose key is the taught word's: every control
        # (no such token) generates exactly what it generated before.
        after = {c.prompt: ask(c.prompt, c.answer) for c in controls}
        assert after == before
