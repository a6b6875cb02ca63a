"""The ``Learner`` protocol the skins are typed with: ``OnlineLearner`` fits it, the skins keep to it.

mypy checks the types (``workbench/learner/protocol.py`` assigns an ``OnlineLearner`` to a
``Learner``); these tests check what mypy does not: default values, and that the MCP tools, which
are typed with ``OnlineLearner``, call nothing outside the protocol either.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from workbench.learner import Learner, OnlineLearner

ROOT = Path(__file__).resolve().parents[2]
SKIN_FILES = sorted([*(ROOT / "widgets").glob("*.py"), *(ROOT / "workbench" / "mcp").glob("*.py")])
MEMBERS = sorted(
    name
    for name, value in vars(Learner).items()
    if not name.startswith("_") and (callable(value) or isinstance(value, property))
)
METHODS = [name for name in MEMBERS if callable(vars(Learner)[name])]


def test_an_online_learner_is_a_learner(learner: OnlineLearner) -> None:
    typed: Learner = learner  # the assignment mypy checks in protocol.py, here at run time
    assert isinstance(typed, Learner)
    assert isinstance(learner.session_dir, Path)  # an attribute, not a property, on the class
    assert not isinstance(object(), Learner)


@pytest.mark.parametrize("name", METHODS)
def test_signatures_match_parameter_for_parameter(name: str) -> None:
    # mypy checks types and that a default exists, not which default: compare those here.
    ours = inspect.signature(getattr(Learner, name)).parameters
    theirs = inspect.signature(getattr(OnlineLearner, name)).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


def test_the_learners_internals_stay_behind_the_protocol() -> None:
    assert {"add_example", "generate", "get_stats", "config", "close"} <= set(MEMBERS)
    assert not {"model", "tokenizer", "store", "metrics", "on_update"} & set(MEMBERS)


def learner_calls(path: Path) -> set[str]:
    """Attributes read on ``learner`` or ``self.learner`` in a skin's code (not its docstrings)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        if (isinstance(owner, ast.Name) and owner.id == "learner") or (
            isinstance(owner, ast.Attribute)
            and owner.attr == "learner"
            and isinstance(owner.value, ast.Name)
            and owner.value.id == "self"
        ):
            names.add(node.attr)
    return names


@pytest.mark.parametrize("path", SKIN_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_skins_call_only_the_protocol(path: Path) -> None:
    assert learner_calls(path) <= set(MEMBERS)
