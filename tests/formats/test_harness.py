"""The harness itself must tell clean loads from hangs, crashes and memory blow-ups."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.formats.harness import assert_clean, check_files, mutate

LOADER = "tests.formats._harness_probe:load"


def test_harness_classifies_outcomes(tmp_path: Path) -> None:
    cases = {
        "ok": "ok",
        "bad": "WeightLoadError",
        "hang": "timeout",
        "hog": "memory",
        "boom": "error",
        "die": "crash",
    }
    paths = []
    for name in cases:
        p = tmp_path / name
        p.write_text(name)
        paths.append(p)
    outcomes = check_files(paths, loader=LOADER, timeout=2.0, mem_mb=256)
    assert [o.status for o in outcomes] == list(cases.values())
    with pytest.raises(AssertionError, match="4 of 6 loads were not clean"):
        assert_clean(outcomes)
    assert_clean(outcomes[:2])


def test_mutate_is_seeded_and_changes_bytes() -> None:
    base = bytes(range(256)) * 4
    a, b = mutate(base, 50, seed=1), mutate(base, 50, seed=1)
    assert a == b
    assert sum(m != base for m in a) >= 48
    assert mutate(base, 5, seed=2) != a[:5]
