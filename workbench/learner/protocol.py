"""The learner as the skins see it: one ``typing.Protocol`` of the calls they make.

Skins type their learner with ``Learner`` (the panels in ``workbench.widgets`` do), so mypy
checks that a skin calls only this public surface, and anything shaped like it (a test double, a
remote proxy) can stand in for ``OnlineLearner``. The boundary: what a skin needs to teach,
steer, watch, load and save, nothing more; the model, tokenizer, store, metrics log and update
hooks stay behind it. ``OnlineLearner`` satisfies it structurally, without inheriting from it:
mypy checks that below; ``tests/widgets/test_protocol.py`` compares parameter names and
defaults, and checks that the panels and the MCP tools call nothing outside the protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from workbench.learner._offline_job import OfflineJob
from workbench.learner.config import LearningConfig, TrainingExample
from workbench.learner.online import AddResult
from workbench.store import ExampleRecord, UpdateRecord

if TYPE_CHECKING:
    from workbench.learner.online import OnlineLearner

__all__ = ["Learner"]


@runtime_checkable
class Learner(Protocol):
    """What panels and MCP tools call on a learner; see ``OnlineLearner`` for the semantics.

    ``isinstance(x, Learner)`` only checks that the names exist (``runtime_checkable``); the
    signatures are checked by mypy.
    """

    # ---------------------------------------------------------------- settings and state
    @property
    def config(self) -> LearningConfig:
        """The settings in force; change them with ``configure``."""
        ...

    @property
    def session_dir(self) -> Path:
        """The session folder (example log, checkpoints)."""
        ...

    @property
    def enabled(self) -> bool:
        """Whether new examples are trained on in the background."""
        ...

    def enable(self) -> None: ...

    def disable(self) -> None: ...

    def set_learning_rate(self, learning_rate: float) -> None: ...

    def configure(self, **changes: Any) -> LearningConfig: ...

    def get_stats(self) -> dict[str, Any]:
        """Counters and state; ``state`` is ``"closed"`` once the learner is closed."""
        ...

    def metrics_since(self, cursor: int = 0) -> tuple[list[UpdateRecord], int]: ...

    def describe(self) -> dict[str, Any]: ...

    # ---------------------------------------------------------------- teaching
    def add_example(
        self, example: TrainingExample | str, target: str | None = None, weight: float = 1.0
    ) -> AddResult: ...

    def remove_example(self, example_id: str) -> bool: ...

    def recent_examples(self, limit: int = 20) -> list[ExampleRecord]: ...

    def force_update(self) -> float: ...

    def undo_last_update(self) -> dict[str, Any]: ...

    def reset_to_base(self) -> dict[str, Any]: ...

    def wait_idle(self, timeout: float = 60.0) -> bool: ...

    # ---------------------------------------------------------------- using the model
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stream: Callable[[str], bool | None] | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> str: ...

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stream: Callable[[str], bool | None] | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> str:
        """The assistant's next reply to ``messages``, through the model's chat template."""
        ...

    def chat_template(self) -> str | None:
        """The chat template in use; None: the model does raw completion only."""
        ...

    def score(self, text: str, target: str | None = None) -> dict[str, float]: ...

    # ---------------------------------------------------------------- weights and lifetime
    def load_weights(
        self, path: str | Path, format: str | None = None, dtype: str | None = None
    ) -> dict[str, Any]: ...

    def save_weights(
        self, path: str | Path, format: str = "custom", dtype: str | None = None
    ) -> Path: ...

    def checkpoint(self) -> Path: ...

    def list_checkpoints(self) -> list[dict[str, Any]]: ...

    def close(self, checkpoint: bool = True) -> None: ...

    # ---------------------------------------------------------------- offline fine-tunes
    def train_offline(
        self,
        steps: int | None = None,
        *,
        epochs: float | None = None,
        nproc: int = 1,
        learning_rate: float | None = None,
        global_batch: int = 8,
        cutoff: int | None = None,
        adopt: bool = True,
        **overrides: Any,
    ) -> OfflineJob:
        """Start a torchrun fine-tune of the current weights; its weights come back on success."""
        ...

    @property
    def offline_job(self) -> OfflineJob | None:
        """The newest offline fine-tune (None before the first)."""
        ...


if TYPE_CHECKING:

    def _online_learner_is_a_learner(learner: OnlineLearner) -> Learner:
        # Checked by mypy on every run: a signature of OnlineLearner that drifts from the
        # protocol fails here, next to the protocol, rather than in some skin.
        return learner
