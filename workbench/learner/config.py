"""What the learner is told: its configuration and the examples it learns from."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench.chat import ChatError, check_messages
from workbench.losses import LOSSES, LossName

__all__ = [
    "LOAD_DTYPES",
    "MAX_MESSAGES",
    "MAX_TEXT_CHARS",
    "ExampleMethod",
    "LearnerError",
    "LearningConfig",
    "TrainingExample",
]

# Float types ``load_weights`` can give the training copy.
LOAD_DTYPES = ("float32", "bfloat16", "float16")

MAX_TEXT_CHARS = 100_000  # per input or target
MAX_WEIGHT = 100.0

# How one example is taught, whatever the learner's update_method (see TrainingExample.method).
ExampleMethod = Literal["edit", "finetune"]


class LearnerError(ValueError):
    """Invalid configuration, example or request; the message says what to change."""


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise LearnerError(f"{name} must be a positive integer, got {value!r}")


def _finite_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LearnerError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_learning_rate(lr: object) -> float:
    value = _finite_number("learning_rate", lr)
    if not 0 < value <= 1:
        raise LearnerError(f"learning_rate must be in (0, 1], got {value}")
    return value


@dataclass
class LearningConfig:
    """How the online learner trains.

    Examples
    --------
    >>> LearningConfig(learning_rate=3e-4).optimizer
    'adamw'
    >>> LearningConfig(update_frequency=0)
    Traceback (most recent call last):
    ...
    workbench.learner.config.LearnerError: update_frequency must be a positive integer, got 0
    """

    buffer_size: int = 1000  # examples kept in memory for replay (the store keeps all)
    update_frequency: int = 10  # one update per this many new examples
    use_gpu: bool = True  # train and infer on CUDA when it is available
    learning_rate: float = 1e-4  # peak learning rate
    loss_fn: LossName = "cross_entropy"  # cross_entropy | mse | contrastive
    enabled: bool = True  # learn from new examples in the background
    checkpoint_frequency: int | None = 100  # checkpoint every this many updates; None = never
    session_dir: str | Path | None = None  # example log + checkpoints; None = a temporary folder
    batch_size: int = 16  # examples per forward/backward pass; bigger updates accumulate gradients
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9  # SGD only
    max_grad_norm: float | None = 1.0  # clip the global gradient norm; None = off
    clip_value: float | None = None  # clip each gradient element to ±clip_value; None = off
    replay_fraction: float = 0.25  # share of each update's examples replayed from earlier ones
    # Examples whose loss is already below this carry no gradient: repeating what the model knows
    # overwrites neighbouring facts (measured on SmolLM2: "capital of France" drifted after 3
    # extra updates on a learned fact) while adding nothing. None trains on everything.
    skip_known_below: float | None = 0.05
    # Stop when right: an example whose every target token is already the model's greedy choice,
    # ahead of the runner-up by at least this many nats, carries no gradient, so repeated
    # submissions of a learned fact stop pushing. None = off.
    stop_when_right: float | None = None
    max_seq_len: int = 256  # tokens per example (input + target), cut beyond
    lr_schedule: Literal["constant", "warmup_cosine"] = "constant"
    warmup_updates: int = 10  # warmup_cosine: linear warmup length
    total_updates: int = 1000  # warmup_cosine: updates until the floor
    min_lr_ratio: float = 0.1  # warmup_cosine: floor as a fraction of the peak
    # What fine-tuning steps compute in. "bfloat16": forward and backward on bfloat16 copies
    # of the matrices, float32 master weights (learner/_mixed.py); "auto" (the default): that
    # for a pretrained float32 model on a CPU that multiplies bfloat16 natively (AMX or
    # AVX512-BF16), float32 otherwise (CUDA: not measured yet). SmolLM2-135M, 2 Xeon cores: an
    # update took 0.84-0.91x float32's time (bench/learner.py), its losses within 0.1%.
    # Edits always compute in float32.
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    seed: int = 0  # replay sampling and dropout
    train_threads: int | None = None  # intra-op threads of the worker; None = all cores but one
    # How long an update may wait for generation and scoring in progress, in multiples of the
    # time it has computed (0: never; reads then run beside it, on one thread of theirs). At
    # 4, reads that never stop still leave training a fifth of the time. SmolLM2 on 2 cores,
    # 8-token generations back to back while it learned: p50 1.20x idle on the float32 model,
    # 1.25x on the fast copy (bench/learner.py; 1.35x at 2, 1.75x before), updates about 4x
    # slower meanwhile. A question every 0.5 s beside an edit: answered in 152 ms instead of
    # 204, the edit took ~15% longer (bench/efficacy.py a).
    reader_priority: float = 4.0
    durable_fsync: bool = False  # fsync every example commit (power-loss safe, slower)
    # Keep the state before the newest update (undo_last_update) and the weights as loaded
    # (reset_to_base): one more copy of the weights and optimizer state in memory.
    keep_undo: bool = True
    # "finetune": every update is an optimizer step on all weights. "edit": supervised examples
    # are taught by a locate-and-edit update (see learner/_editing.py) kept in the edit memory
    # (edit_store): on SmolLM2-135M no control fact changes and no neighbour leaks, where
    # fine-tuning changed 7-16 of 50 controls and leaked. "auto" (the default): edit a
    # pretrained model (weights from a model file), fine-tune a random one. Edits key on one
    # word per example, which suits facts and corrections; labels and styles must generalize
    # beyond a word, so an example can ask for fine-tuning (TrainingExample.method; the
    # labeling session's do), and self-supervised examples are always fine-tuned.
    update_method: Literal["auto", "finetune", "edit"] = "auto"
    # None: a sixth of the way up with the memory (SmolLM2: layer 5 of 30), a quarter written
    # into weights (layer 8); see _editing.default_edit_layer
    edit_layer: int | None = None
    # An edit's residual steps before it settles for its examples answered as a later
    # submission judges them (loss < 0.1, greedy); up to 4x as many while one is not. (SmolLM2,
    # 4 facts: 20 stopped two of them 4 steps sooner than 30, probes 12/12 either way.)
    edit_steps: int = 20
    # Residual norm bound, in multiples of the layer's typical output. None: 8 with the memory
    # (a residual acts only on its word, so a firm one costs nothing elsewhere; SmolLM2 at
    # layer 8, 20 facts: 55/60 probes at 8, 52/60 at 4; 12 at layer 5 took more steps for
    # fewer probes, 8 of 12 facts against 11 of 12), 4 written into weights
    # (where every write leaks into other keys in proportion to its size).
    edit_clamp: float | None = None
    edit_regularization: float = 100.0  # weight of "leave generic text alone" in the write-in
    edit_spread: int = 1  # MLP layers that share an edit, ending at edit_layer (MEMIT: several)
    # Where an edit keeps what it teaches. "memory": beside the layer, as keyed residuals that
    # only tokens whose key lies within edit_threshold (cosine) of a taught word's key receive
    # (workbench.models.memory): the weights do not change, every other token is computed bit
    # for bit as before. "weights": written into the down projections (ROME/MEMIT), which leaks
    # into other keys: 14 of 40 controls wrong after 10 facts in a row on SmolLM2.
    edit_store: Literal["memory", "weights"] = "memory"
    # Cosine to a taught word's key at which its residual applies. SmolLM2 (20 facts): a
    # taught word's held-out phrasings sit at 0.76-0.98, other invented words in the same
    # template at up to 0.42; 0.5 let one of 60 neighbour prompts through.
    edit_threshold: float = 0.6
    # What generate/chat decode on: "fast", an int8 copy of the published weights rebuilt after
    # each update (workbench.models.fast; Llama-style models on the CPU, others fall back), or
    # "reference", the float32 weights. describe()["inference"] says which runs. Opt-in: on
    # SmolLM2 the copy's greedy continuations equal float32's (13 probes and chat prompts), but
    # its weights sit on the Q4_1 file's grid and a fine-tuning step (lr 1e-4) is mostly rounded
    # away: after 1-3 AdamW steps the copy's logits moved 0.32-0.38x as far as float32's.
    inference: Literal["fast", "reference"] = "reference"

    @classmethod
    def for_pretrained(cls, **overrides: Any) -> LearningConfig:
        """Edits kept in the edit memory instead of fine-tuning: the most specific way to
        teach a pretrained model facts (``bench/efficacy.py`` on SmolLM2-135M; see
        ``update_method``), answered by the fast int8 copy, which applies the memory as the
        float32 model does and leaves the weights (which edits do not change) on its grid:
        SmolLM2-135M decodes 3.7x faster there (``bench/generate.py``).

        >>> c = LearningConfig.for_pretrained()
        >>> c.update_method, c.inference
        ('edit', 'fast')
        """
        return cls(**{"update_method": "edit", "inference": "fast", **overrides})

    def __post_init__(self) -> None:
        for name in ("buffer_size", "update_frequency", "batch_size", "max_seq_len"):
            _positive_int(name, getattr(self, name))
        for name in ("warmup_updates", "total_updates", "keep_checkpoints"):
            _positive_int(name, getattr(self, name))
        if self.checkpoint_frequency is not None:
            _positive_int("checkpoint_frequency", self.checkpoint_frequency)
        if self.train_threads is not None:
            _positive_int("train_threads", self.train_threads)
        self.learning_rate = check_learning_rate(self.learning_rate)
        if _finite_number("reader_priority", self.reader_priority) < 0:
            raise LearnerError(f"reader_priority must be >= 0, got {self.reader_priority}")
        if self.loss_fn not in LOSSES:
            raise LearnerError(f"loss_fn must be one of {', '.join(LOSSES)}, got {self.loss_fn!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise LearnerError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "warmup_cosine"):
            raise LearnerError(
                f"lr_schedule must be 'constant' or 'warmup_cosine', got {self.lr_schedule!r}"
            )
        if _finite_number("weight_decay", self.weight_decay) < 0:
            raise LearnerError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= _finite_number("momentum", self.momentum) < 1:
            raise LearnerError(f"momentum must be in [0, 1), got {self.momentum}")
        for name in ("max_grad_norm", "clip_value", "skip_known_below"):
            value = getattr(self, name)
            if value is not None and _finite_number(name, value) <= 0:
                raise LearnerError(f"{name} must be positive or None, got {value}")
        if (
            self.stop_when_right is not None
            and _finite_number("stop_when_right", self.stop_when_right) < 0
        ):
            raise LearnerError(f"stop_when_right must be >= 0 or None, got {self.stop_when_right}")
        if not 0 <= _finite_number("replay_fraction", self.replay_fraction) < 1:
            raise LearnerError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if not 0 <= _finite_number("min_lr_ratio", self.min_lr_ratio) <= 1:
            raise LearnerError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.update_method not in ("auto", "finetune", "edit"):
            raise LearnerError(
                f"update_method must be 'auto', 'finetune' or 'edit', got {self.update_method!r}"
            )
        if self.edit_layer is not None and (
            not isinstance(self.edit_layer, int)
            or isinstance(self.edit_layer, bool)
            or self.edit_layer < 0
        ):
            raise LearnerError(
                f"edit_layer must be a layer index >= 0 or None, got {self.edit_layer!r}"
            )
        _positive_int("edit_steps", self.edit_steps)
        _positive_int("edit_spread", self.edit_spread)
        if self.edit_store not in ("memory", "weights"):
            raise LearnerError(f"edit_store must be 'memory' or 'weights', got {self.edit_store!r}")
        if not 0 < _finite_number("edit_threshold", self.edit_threshold) < 1:
            raise LearnerError(f"edit_threshold must be in (0, 1), got {self.edit_threshold}")
        for name in ("edit_clamp", "edit_regularization"):
            value = getattr(self, name)
            if (value is not None or name != "edit_clamp") and _finite_number(name, value) <= 0:
                raise LearnerError(f"{name} must be positive, got {value}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise LearnerError(
                f"compute_dtype must be 'auto', 'float32' or 'bfloat16', got {self.compute_dtype!r}"
            )
        if self.inference not in ("fast", "reference"):
            raise LearnerError(f"inference must be 'fast' or 'reference', got {self.inference!r}")
        if not isinstance(self.seed, int):
            raise LearnerError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["session_dir"] = None if self.session_dir is None else str(self.session_dir)
        return data


def _new_id() -> str:
    return uuid.uuid4().hex


MAX_MESSAGES = 256  # turns in one conversation example


@dataclass(frozen=True)
class TrainingExample:
    """One thing to learn. ``target=None`` is self-supervised: learn the input itself.

    With a target, the model learns to continue ``input`` with ``target`` (the two are
    concatenated as token sequences, exactly as generation continues a prompt). With
    ``messages`` instead of ``input`` (a conversation of ``{"role", "content"}`` dicts), the
    model learns ``target`` as the assistant's next reply: the conversation is rendered with
    the model's chat template and only the reply and its end-of-turn token carry a loss.
    ``id`` makes a retried submission idempotent; one is drawn when not given.

    >>> TrainingExample("What is 2 + 2?", " 4", weight=2.0).weight
    2.0
    >>> TrainingExample(messages=[{"role": "user", "content": "Hi"}], target="Hello!").input
    'Hi'
    >>> TrainingExample("Review: great. Sentiment:", " positive", method="finetune").method
    'finetune'
    >>> TrainingExample("", None)
    Traceback (most recent call last):
    ...
    workbench.learner.config.LearnerError: input must be a non-empty string
    """

    input: str = ""
    target: str | None = None
    weight: float = 1.0
    id: str = field(default_factory=_new_id)
    messages: tuple[dict[str, str], ...] | None = None
    # How this example is taught: None follows the learner's update_method; "finetune" always
    # takes an optimizer step (labels and styles, which must generalize beyond one word);
    # "edit" always edits (a fact or correction keyed on its most surprising word).
    method: ExampleMethod | None = None

    @classmethod
    def from_chat(
        cls,
        messages: Sequence[Mapping[str, str]],
        target: str,
        weight: float = 1.0,
        id: str | None = None,
        method: ExampleMethod | None = None,
    ) -> TrainingExample:
        """The assistant should answer ``messages`` with ``target``."""
        kwargs: dict[str, Any] = {} if id is None else {"id": id}
        return cls(
            messages=tuple(dict(m) for m in messages),
            target=target,
            weight=weight,
            method=method,
            **kwargs,
        )

    def __post_init__(self) -> None:
        if self.messages is not None:
            self._check_conversation()
        for name in ("input", "target"):
            value = getattr(self, name)
            if value is None and name == "target":
                continue
            _check_text(name, value)
        weight = _finite_number("weight", self.weight)
        if not 0 < weight <= MAX_WEIGHT:
            raise LearnerError(f"weight must be in (0, {MAX_WEIGHT:g}], got {weight}")
        object.__setattr__(self, "weight", weight)
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 200:
            raise LearnerError("id must be a non-empty string of at most 200 characters")
        if self.method not in (None, "edit", "finetune"):
            raise LearnerError(
                f"method must be 'edit', 'finetune' or None (the learner's update_method), "
                f"got {self.method!r}"
            )
        if self.method == "edit" and self.target is None:
            raise LearnerError(
                "an example without a target cannot be edited in: give a target, or use "
                "method='finetune' (or None) to learn the text itself"
            )

    def _check_conversation(self) -> None:
        """Roles from the fixed set, string contents, bounded size; ``input`` becomes the
        last user turn (what lists and tables show)."""
        if self.input:
            raise LearnerError("give either input or messages, not both")
        if self.target is None:
            raise LearnerError("a conversation example needs a target: the assistant's reply")
        raw = self.messages
        if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
            raise LearnerError("messages must be a list of {'role', 'content'} dicts")
        if not 0 < len(raw) <= MAX_MESSAGES:
            raise LearnerError(f"messages must hold 1 to {MAX_MESSAGES} turns, got {len(raw)}")
        try:
            plain = check_messages(raw)
        except ChatError as e:
            raise LearnerError(str(e)) from None
        msgs = tuple({"role": m["role"], "content": m["content"]} for m in plain)
        if sum(len(m["content"]) for m in msgs) > MAX_TEXT_CHARS:
            raise LearnerError(f"the conversation is longer than {MAX_TEXT_CHARS:,} characters")
        for i, m in enumerate(msgs):
            if "\x00" in m["content"]:
                raise LearnerError(f"message {i} contains a NUL character")
        if msgs[-1]["role"] == "assistant":
            raise LearnerError(
                "the conversation ends with an assistant turn; the target is the assistant's "
                "next reply, so end with the user's turn"
            )
        users = [m["content"] for m in msgs if m["role"] == "user"]
        if not users or not any(users):
            raise LearnerError("the conversation needs a non-empty user turn")
        object.__setattr__(self, "messages", msgs)
        object.__setattr__(self, "input", next(u for u in reversed(users) if u))


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise LearnerError(f"{name} must be a non-empty string")
    if len(value) > MAX_TEXT_CHARS:
        raise LearnerError(f"{name} has {len(value):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    if "\x00" in value:
        raise LearnerError(f"{name} contains a NUL character")
