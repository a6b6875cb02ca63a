"""The efficacy benchmark's scenarios (``bench/efficacy.py`` runs them): ``Bench`` answers for
the base model once (``prepare``), then runs scenario a/c (one fact, then repeats), b (facts in
sequence) and d (a weighted mix) for one side at a time and returns plain dicts for the report.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _efficacy_data import (
    Control,
    EfficacyData,
    Fact,
    chat_form,
    contains_answer,
    control_report,
    neighbour_leaks,
    percentile,
    token_budget,
)
from _efficacy_sides import (
    LatencyProbe,
    OurSide,
    RssMonitor,
    Side,
    TorchBaseline,
    Variant,
    greedy,
    perplexity,
    release_freed_memory,
    torch_threads,
    user_turn,
)

from workbench.chat import encode_prompt
from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

ROBUST_MARGIN = 1.0  # nats: a control whose base answer wins by less is "fragile"
REPEATS = 3  # scenario c
MIX_WEIGHTS = (0.5, 1.0, 5.0)  # scenario d
LATENCY_PROMPT = "The capital of France is"  # generated while updates run


@dataclass
class Baseline:
    """What the base model says, computed once."""

    controls: dict[str, str]
    probes: dict[str, str]
    neighbours: dict[str, str]
    robust: frozenset[str]
    margins: dict[str, float]
    ppl: float
    dropped: list[str]  # control candidates the base model got wrong
    checked: int  # control candidates asked


class Bench:
    def __init__(
        self,
        data: EfficacyData,
        model_path: Path,
        args: argparse.Namespace,
        log: Callable[[str], None] = print,
        loader: Callable[[], tuple[Transformer, Tokenizer]] | None = None,
    ) -> None:
        # --form chat: every prompt is asked, and every example taught, as a user turn
        self.chat = getattr(args, "form", "text") == "chat"
        self.data = chat_form(data) if self.chat else data
        self.model_path = model_path
        self.args = args
        self.log = log
        self._loader = loader
        self.sanity: dict[str, Any] | None = None  # ours at step 0 vs the plain greedy
        self.rss = RssMonitor()
        self.tokenizer: Tokenizer | None = None
        self.base: Baseline | None = None
        self.controls: list[Control] = []
        self.budget: dict[str, int] = {}

    # ---------------------------------------------------------------- models
    def load(self) -> tuple[Transformer, Tokenizer]:
        """A fresh copy of the base weights, straight from the file (as a user loads it)."""
        if self._loader is not None:
            return self._loader()
        from workbench.formats import load_model

        return load_model(self.model_path, progress=False)

    def ask(
        self, side: Side | None, prompts: Sequence[str], model: Transformer | None = None
    ) -> dict[str, str]:
        assert self.tokenizer is not None
        out = {}
        for p in prompts:
            if side is not None:
                out[p] = side.generate(p, self.budget[p], self.chat)
            else:
                assert model is not None
                out[p] = greedy(model, self.tokenizer, p, self.budget[p], self.chat)
        return out

    # ---------------------------------------------------------------- base
    def prepare(self, facts: Sequence[Fact], n_controls: int) -> Baseline:
        """Base answers, control filtering (dropped ones are reported), margins, perplexity."""
        model, tok = self.load()
        self.tokenizer = tok
        for f in self.data.facts:
            for p in (*f.probes, *(n.prompt for n in f.neighbours)):
                # a neighbour prompt may serve several facts: room for the longest answer
                self.budget[p] = max(self.budget.get(p, 0), token_budget(tok, f.answer, self.chat))
        for c in self.data.controls:
            self.budget[c.prompt] = token_budget(tok, c.answer, self.chat)
        start = time.perf_counter()
        # Candidates round-robin over kinds, checked until enough are right (or a model that
        # knows little has had a fair number of tries).
        candidates: dict[str, str] = {}
        right: list[Control] = []
        dropped: list[Control] = []
        for c in _spread_by_kind(self.data.controls, len(self.data.controls), keep_order=False):
            if len(right) == n_controls or len(candidates) >= 2 * n_controls + 10:
                break
            candidates[c.prompt] = self.ask(None, [c.prompt], model)[c.prompt]
            (right if contains_answer(candidates[c.prompt], c.answers) else dropped).append(c)
        self.controls = right
        margins = {
            c.prompt: answer_margin(
                model, tok, c.prompt, candidates[c.prompt], c.answers, self.chat
            )
            for c in self.controls
        }
        robust = frozenset(p for p, m in margins.items() if m >= ROBUST_MARGIN)
        probes = self.ask(None, [p for f in facts for p in f.probes], model)
        neighbours = self.ask(None, [n.prompt for f in facts for n in f.neighbours], model)
        ppl = perplexity(model, tok, self.data.general_text)
        self.base = Baseline(
            {c.prompt: candidates[c.prompt] for c in self.controls},
            probes,
            neighbours,
            robust,
            margins,
            ppl,
            [c.prompt for c in dropped],
            len(candidates),
        )
        self.log(
            f"base ({'chat' if self.chat else 'text'} form): checked {len(candidates)} of {len(self.data.controls)} control candidates, "
            f"{len(dropped)} dropped (base model wrong), using {len(self.controls)} "
            f"({len(robust)} robust, margin >= {ROBUST_MARGIN} nat); "
            f"probes right at base: {sum(contains_answer(probes[p], [f.answer]) for f in facts for p in f.probes)}"
            f"/{sum(len(f.probes) for f in facts)}; general-text perplexity {ppl:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
        if len(self.controls) < n_controls:
            self.log(f"warning: only {len(self.controls)} controls (asked for {n_controls})")
        del model
        gc.collect()
        return self.base

    # ---------------------------------------------------------------- sides
    def make_side(self, who: str, variant: Variant) -> Side:
        model, tok = self.load()
        if who == "ours":
            return OurSide(variant.label, model, tok, variant.config)
        cfg = variant.learning_config()
        return TorchBaseline(f"torch AdamW lr {cfg.learning_rate:g}", model, tok, cfg)

    def evaluate(self, side: Side, facts: Sequence[Fact]) -> dict[str, Any]:
        """Probes, neighbours (leaks), controls and perplexity after teaching ``facts``."""
        base = self.base
        assert base is not None
        probes = self.ask(side, [p for f in facts for p in f.probes])
        nbs = self.ask(side, [n.prompt for f in facts for n in f.neighbours])
        ctrl = self.ask(side, [c.prompt for c in self.controls])
        report = control_report(
            self.controls, base.controls, ctrl, [f.answer for f in facts], base.robust
        )
        leaks = {
            f.id: neighbour_leaks([n.prompt for n in f.neighbours], f.answer, base.neighbours, nbs)
            for f in facts
        }
        ppl = side.perplexity(self.data.general_text)
        return {
            "probes_right": sum(
                contains_answer(probes[p], [f.answer]) for f in facts for p in f.probes
            ),
            "probes": sum(len(f.probes) for f in facts),
            "facts_all_right": sum(
                all(contains_answer(probes[p], [f.answer]) for p in f.probes) for f in facts
            ),
            "leaks": sum(len(v) for v in leaks.values()),
            "neighbours": sum(len(f.neighbours) for f in facts),
            "leaked": {k: v for k, v in leaks.items() if v},
            "controls": len(self.controls),
            **report.counts(),
            "changed_examples": {p: [base.controls[p], ctrl[p]] for p in report.changed},
            "ppl": ppl,
            "ppl_change": ppl / base.ppl - 1,
            "answers": {"probes": probes, "neighbours": nbs},
        }

    def check_same_as_plain(self, side: Side, n: int = 6) -> dict[str, Any]:
        """Before any update, ``learner.generate`` must say what the plain greedy decoding of
        the base weights said; otherwise "changed" would count decoding differences."""
        assert self.base is not None
        known = {**self.base.controls, **self.base.probes}
        prompts = list(known)[:n]
        got = self.ask(side, prompts)
        differ = [p for p in prompts if got[p] != known[p]]
        if differ:
            self.log(f"warning: learner.generate differs from plain greedy at step 0 on {differ}")
        return {"checked": len(prompts), "differ": differ}

    def probes_right(self, side: Side, fact: Fact) -> int:
        got = self.ask(side, fact.probes)
        return sum(contains_answer(got[p], [fact.answer]) for p in fact.probes)

    def teach_until_right(self, side: Side, fact: Fact) -> dict[str, Any]:
        """Submit ``fact`` until all its probes are right, at most ``max_rounds`` times."""
        updates = stepped = 0
        train_s = 0.0
        history = []
        rss_gb = []  # after each round: does memory grow with updates?
        learned_at = None
        for r in range(1, self.args.max_rounds + 1):
            res = side.submit(fact.examples(chat=self.chat))
            updates += res.updates
            stepped += res.stepped
            train_s += res.train_s
            right = self.probes_right(side, fact)
            history.append(right)
            rss_gb.append(round(self.rss.now() / 2**30, 3))
            self.log(
                f"    {side.label} {fact.id} round {r}: {res.updates} update(s) "
                f"{res.train_s:.1f} s, probes {right}/{len(fact.probes)}, RSS {rss_gb[-1]:.2f} GB"
            )
            if right == len(fact.probes):
                learned_at = r
                break
        return {
            "fact": fact.id,
            "learned": learned_at is not None,
            "rounds": learned_at,
            "updates": updates,
            "stepped": stepped,
            "train_s": train_s,
            "probes_by_round": history,
            "rss_gb_by_round": rss_gb,
        }

    # ---------------------------------------------------------------- scenarios
    def side_run(
        self, who: str, variant: Variant, body: Callable[[Side], dict[str, Any]]
    ) -> dict[str, Any]:
        gc.collect()
        release_freed_memory()  # what the previous side freed must not count for this one
        floor = self.rss.reset()
        side = self.make_side(who, variant)
        probe = None
        try:
            if who == "ours" and self.sanity is None:
                self.sanity = self.check_same_as_plain(side)
            if not self.args.no_latency:
                ask = functools.partial(side.background_generate, LATENCY_PROMPT)
                probe = LatencyProbe(ask, side.learning)
                probe.measure_idle(3)
            out = body(side)
        finally:
            if probe is not None:
                probe.close()
            side.close()
        out["peak_rss_gb"] = self.rss.peak() / 2**30
        out["rss_at_start_gb"] = floor / 2**30
        if probe is not None:
            out["latency_ms"] = {
                "calls": len(probe.busy_ms),
                "p50": percentile(probe.busy_ms, 50),
                "p95": percentile(probe.busy_ms, 95),
                "max": max(probe.busy_ms, default=math.nan),
                "failures": probe.failures,
                "all": probe.busy_ms,
                "idle": probe.idle_ms,
            }
        del side
        gc.collect()
        return out

    def scenario_single(
        self, who: str, variant: Variant, facts: Sequence[Fact], repeats: bool
    ) -> dict[str, Any]:
        """(a) one fact from fresh weights, per fact; (c) then ``REPEATS`` more submissions."""
        runs = []
        for fact in facts:

            def body(side: Side, fact: Fact = fact) -> dict[str, Any]:
                rec = self.teach_until_right(side, fact)
                rec["after_learn"] = self.evaluate(side, [fact])
                if repeats:
                    rep = [side.submit(fact.examples(chat=self.chat)) for _ in range(REPEATS)]
                    rec["repeat_updates"] = sum(r.updates for r in rep)
                    rec["repeat_stepped"] = sum(r.stepped for r in rep)
                    rec["repeat_train_s"] = sum(r.train_s for r in rep)
                    rec["after_repeats"] = self.evaluate(side, [fact])
                return rec

            runs.append(self.side_run(who, variant, body))
            self._log_eval(who, variant, runs[-1])
        return {"runs": runs}

    def scenario_sequential(
        self, who: str, variant: Variant, facts: Sequence[Fact]
    ) -> dict[str, Any]:
        """(b) facts taught one after another, each until right; everything judged at the end."""

        def body(side: Side) -> dict[str, Any]:
            taught = [self.teach_until_right(side, f) for f in facts]
            return {"taught": taught, "after": self.evaluate(side, facts)}

        return self.side_run(who, variant, body)

    def scenario_weighted(
        self, who: str, variant: Variant, facts: Sequence[Fact]
    ) -> dict[str, Any]:
        """(d) facts mixed in one submission with weights 0.5 / 1 / 5, until all are right."""
        weights = {f.id: MIX_WEIGHTS[i % len(MIX_WEIGHTS)] for i, f in enumerate(facts)}
        per_fact = [f.examples(weights[f.id], self.chat) for f in facts]
        mixed = [e for group in zip(*per_fact, strict=False) for e in group]
        mixed += [e for ex in per_fact for e in ex[min(map(len, per_fact)) :]]

        def body(side: Side) -> dict[str, Any]:
            learned: dict[str, int | None] = {f.id: None for f in facts}
            updates, train_s = 0, 0.0
            for r in range(1, self.args.max_rounds + 1):
                res = side.submit(mixed)
                updates += res.updates
                train_s += res.train_s
                for f in facts:
                    if learned[f.id] is None and self.probes_right(side, f) == len(f.probes):
                        learned[f.id] = r
                self.log(
                    f"    {side.label} mix round {r}: learned {sum(v is not None for v in learned.values())}/{len(facts)}"
                )
                if all(v is not None for v in learned.values()):
                    break
            return {
                "weights": weights,
                "learned_round": learned,
                "updates": updates,
                "train_s": train_s,
                "after": self.evaluate(side, facts),
            }

        return self.side_run(who, variant, body)

    def _log_eval(self, who: str, variant: Variant, run: dict[str, Any]) -> None:
        for key in ("after_learn", "after_repeats"):
            if key in run:
                e = run[key]
                self.log(
                    f"    -> {who} {variant.label} {run['fact']} {key}: probes {e['probes_right']}/{e['probes']}, "
                    f"controls changed {e['changed']} (robust {e['robust_changed']}), wrong {e['wrong']}, "
                    f"leaks {e['leaks']}, intrusions {e['intrusions']}, ppl {100 * e['ppl_change']:+.2f}%"
                )


def answer_margin(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    continuation: str,
    answers: Sequence[str],
    chat: bool = False,
) -> float:
    """How firmly the model knows a control: the smallest log-prob gap (top-1 minus top-2)
    over the tokens of its greedy ``continuation`` up to where the answer is complete
    (``chat``: ``prompt`` is a user turn)."""
    p_ids = encode_prompt(tokenizer, user_turn(prompt)) if chat else tokenizer.encode(prompt)
    c_ids = tokenizer.encode(continuation)
    k = next(
        (
            j
            for j in range(1, len(c_ids) + 1)
            if contains_answer(tokenizer.decode(c_ids[:j]), answers)
        ),
        max(1, len(c_ids)),
    )
    ids = torch.tensor([p_ids + c_ids[:k]], device=model.device)
    with torch_threads(1), torch.no_grad():
        model.eval()
        logits = model(ids)[0, len(p_ids) - 1 : len(p_ids) - 1 + k].float()  # (k, V)
    top = torch.log_softmax(logits, -1).topk(2, dim=-1).values  # (k, 2)
    return float((top[:, 0] - top[:, 1]).min())


def _spread_by_kind(controls: Sequence[Control], n: int, keep_order: bool = True) -> list[Control]:
    """Up to ``n`` controls taken round-robin over kinds (file order within a kind), returned
    in file order, or in the round-robin order with ``keep_order=False``.

    >>> cs = [Control("x", "a", "1"), Control("x", "b", "1"), Control("y", "c", "1")]
    >>> [c.prompt for c in _spread_by_kind(cs, 2)], [c.prompt for c in _spread_by_kind(cs, 3, False)]
    (['a', 'c'], ['a', 'c', 'b'])
    """
    by_kind: dict[str, list[Control]] = {}
    for c in controls:
        by_kind.setdefault(c.kind, []).append(c)
    out: list[Control] = []
    while len(out) < n and any(by_kind.values()):
        for kind in list(by_kind):
            if by_kind[kind] and len(out) < n:
                out.append(by_kind[kind].pop(0))
    if not keep_order:
        return out
    order = {c.prompt: i for i, c in enumerate(controls)}
    return sorted(out, key=lambda c: order[c.prompt])
