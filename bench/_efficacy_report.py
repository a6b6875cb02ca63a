"""The efficacy benchmark's report (``bench/efficacy.py`` prints it): one table row per
(scenario, learner) from the results dict, the goals the learner must meet, and the text around
them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GOALS = {
    "a_updates": 3,  # all probes right in <= 3 updates ...
    "a_train_s": 10.0,  # ... and <= 10 s of training
    "controls_changed": 0,  # of 50, after a and after c
    "leaks": 0,  # after a and after c
    "b_probe_accuracy": 0.9,  # after 20 sequential facts
    "b_controls_changed": 1,
    "ppl_change": 0.01,  # |relative change| of general-text perplexity
    "peak_rss_gb": 4.0,
}


def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def _mm(xs: Sequence[float], fmt: str = "{:.1f}") -> str:
    """'mean/max' of per-fact numbers."""
    if not xs:
        return "-"
    return f"{fmt.format(_mean(xs))}/{fmt.format(max(xs))}"


def _eval_cells(evals: Sequence[dict[str, Any]]) -> list[str]:
    n_ctrl = evals[0]["controls"] if evals else 0
    return [
        f"{sum(e['probes_right'] for e in evals)}/{sum(e['probes'] for e in evals)}",
        f"{_mm([e['changed'] for e in evals])} of {n_ctrl}"
        if len(evals) > 1
        else f"{evals[0]['changed']} of {n_ctrl}",
        _mm([e["robust_changed"] for e in evals])
        if len(evals) > 1
        else str(evals[0]["robust_changed"]),
        _mm([e["wrong"] for e in evals]) if len(evals) > 1 else str(evals[0]["wrong"]),
        f"{sum(e['leaks'] for e in evals)}/{sum(e['neighbours'] for e in evals)}",
        str(sum(e["intrusions"] for e in evals)),
        f"{100 * _mean([e['ppl_change'] for e in evals]):+.2f}"
        + (f" ({100 * max(abs(e['ppl_change']) for e in evals):.2f})" if len(evals) > 1 else ""),
    ]


COLUMNS = [
    "scenario",
    "learner",
    "learned",
    "updates",
    "train s",
    "probes",
    "controls changed",
    "robust chg",
    "ctrl wrong",
    "leaks",
    "intrusions",
    "ppl Δ%",
    "peak RSS GB",
    "gen p50/p95 ms",
]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per (scenario, learner) from the results dict ``run_bench`` returns."""
    rows: list[list[str]] = []
    for scen in ("a", "c", "b", "d"):
        for entry in results.get("scenarios", {}).get(scen, []):
            who, r = entry["learner"], entry["result"]
            rss = f"{entry['peak_rss_gb']:.2f}"
            lat = entry.get("latency", "-")
            if scen in ("a", "c"):
                runs = r["runs"]
                if scen == "a":
                    evals = [x["after_learn"] for x in runs]
                    learned = f"{sum(x['learned'] for x in runs)}/{len(runs)}"
                    upd = _mm([x["updates"] for x in runs])
                    secs = _mm([x["train_s"] for x in runs])
                else:
                    evals = [x["after_repeats"] for x in runs]
                    learned = f"{sum(e['facts_all_right'] for e in evals)}/{len(runs)}"
                    upd = (
                        f"+{sum(x['repeat_updates'] for x in runs)} "
                        f"({sum(x['repeat_stepped'] for x in runs)} stepped)"
                    )
                    secs = _mm([x["repeat_train_s"] for x in runs])
                name = {"a": "a one fact", "c": "c +3 repeats"}[scen]
            elif scen == "b":
                taught, evals = r["taught"], [r["after"]]
                learned = f"{sum(t['learned'] for t in taught)}/{len(taught)} taught"
                upd = _mm([t["updates"] for t in taught])
                secs = f"{sum(t['train_s'] for t in taught):.1f}"
                name = f"b {len(taught)} sequential"
            else:
                evals = [r["after"]]
                by_w: dict[float, list[bool]] = {}
                for fid, w in r["weights"].items():
                    by_w.setdefault(w, []).append(r["learned_round"][fid] is not None)
                learned = " ".join(f"w{w:g}:{sum(v)}/{len(v)}" for w, v in sorted(by_w.items()))
                upd = str(r["updates"])
                secs = f"{r['train_s']:.1f}"
                name = f"d mix {len(r['weights'])} weighted"
            rows.append([name, who, learned, upd, secs, *_eval_cells(evals), rss, lat])
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows, strict=True)]
    line = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [line(COLUMNS), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def goal_checks(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(learner, what was measured against which goal, met) for ours, from ``run_bench``."""
    g = GOALS
    out: list[tuple[str, str, bool]] = []
    for scen, entries in results.get("scenarios", {}).items():
        for entry in (e for e in entries if e["side"] == "ours"):
            who, r = entry["learner"], entry["result"]

            def check(what: str, ok: bool, who: str = who, scen: str = scen) -> None:
                out.append((who, f"{scen}: {what}", ok))

            if scen in ("a", "c"):
                key = "after_learn" if scen == "a" else "after_repeats"
                evals = [x[key] for x in r["runs"]]
            else:
                evals = [r["after"]]
            if scen == "a":
                runs = r["runs"]
                worst = max((x["updates"], x["train_s"]) for x in runs)
                check(
                    f"every fact right in <= {g['a_updates']} updates and <= {g['a_train_s']:g} s "
                    f"of training (worst {worst[0]} updates, {worst[1]:.1f} s)",
                    all(
                        x["learned"]
                        and x["updates"] <= g["a_updates"]
                        and x["train_s"] <= g["a_train_s"]
                        for x in runs
                    ),
                )
            if scen in ("a", "c"):
                changed = max(e["changed"] for e in evals)
                leaks = sum(e["leaks"] for e in evals)
                check(
                    f"<= {g['controls_changed']} controls changed (max {changed}) and "
                    f"<= {g['leaks']} neighbour leaks ({leaks})",
                    changed <= g["controls_changed"] and leaks <= g["leaks"],
                )
            if scen == "b":
                e = evals[0]
                acc = e["probes_right"] / e["probes"]
                check(
                    f">= {g['b_probe_accuracy']:.0%} of all probes right ({acc:.0%}) and "
                    f"<= {g['b_controls_changed']} controls changed ({e['changed']})",
                    acc >= g["b_probe_accuracy"] and e["changed"] <= g["b_controls_changed"],
                )
            ppl = max(abs(e["ppl_change"]) for e in evals)
            check(
                f"general-text perplexity within ±{g['ppl_change']:.0%} (worst {100 * ppl:.2f}%)",
                ppl <= g["ppl_change"],
            )
            if scen == "c":
                continue  # the same runs as a: memory and latency are checked there
            rss = entry["peak_rss_gb"]
            check(f"peak RSS < {g['peak_rss_gb']:g} GB ({rss:.2f})", rss < g["peak_rss_gb"])
            calls = entry.get("latency_calls")
            if calls is not None:
                fails = entry.get("latency_failures", [])
                check(
                    f"generation answered while learning ({calls} calls, {len(fails)} failed)",
                    calls > 0 and not fails,
                )
    return out


def report(results: dict[str, Any]) -> str:
    b, m = results["base"], results["machine"]
    lines = [
        f"SmolLM2-135M-Instruct ({Path(results['model']).name}); torch {m['torch']}, "
        f"{m['cpus']} CPUs, load average {_load(m.get('loadavg_start'))} -> {_load(m.get('loadavg_end'))}",
        f"controls: {b['controls_used']} used ({b['robust_controls']} robust); "
        f"{len(b['controls_dropped'])} of {b['control_candidates_checked']} candidates checked were "
        f"dropped (base model wrong; {b['control_candidates']} in the file); "
        f"probes right at base {b['probes_right']}/{b['probes']}; "
        f"general-text perplexity {b['ppl']:.3f}",
        "",
        format_table(table_rows(results)),
        "",
        "updates/train s: a = until all probes right (mean/max over facts; a fact not learned "
        "in --max-rounds counts all its rounds); c = the repeat submissions (stepped: updates "
        "that changed the weights); b = per fact (mean/max), total s; d = all rounds.",
        "controls changed: normalized answer differs from the base model's (mean/max over facts); "
        "robust: base margin >= 1 nat; wrong: right at base, wrong now; "
        "intrusions: controls now naming a taught answer; gen: ms per 8-token answer while an "
        "update runs (idle: none running); peak RSS: the whole process while that side ran.",
        "",
        "goals (ours):",
    ]
    sanity = b.get("ours_vs_plain_at_step_0")
    if sanity and sanity["differ"]:
        lines.insert(2, f"WARNING: learner.generate differed from plain greedy at step 0: {sanity}")
    for who, what, ok in goal_checks(results):
        lines.append(f"  {'PASS' if ok else 'FAIL'}  [{who}] {what}")
    lines.append(
        "wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["wall_s"].items())
    )
    return "\n".join(lines)


def _load(avg: Sequence[float] | None) -> str:
    return "?" if not avg else "/".join(f"{x:.1f}" for x in avg)
