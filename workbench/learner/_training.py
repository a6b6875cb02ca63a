"""The worker's training state and one update step.

``Trainer`` is owned by the learner's worker thread: nothing here locks. Inference helpers
live in ``_inference``.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from workbench import losses
from workbench._openmp import free_cores as _free_cores
from workbench.batching import Encoded, collate
from workbench.learner._editing import Editor, EditResult, default_edit_layer, editable
from workbench.learner._mixed import Shadows, resolve_compute
from workbench.learner._weights import TrainerWeights
from workbench.learner.config import LearnerError, LearningConfig
from workbench.models import Transformer
from workbench.optim import FusedAdamW, FusedSGD
from workbench.tokenizers import Tokenizer

if TYPE_CHECKING:
    from workbench.learner._undo import UndoPoint


def make_optimizer(
    model: Transformer, cfg: LearningConfig, lr: float
) -> tuple[torch.optim.Optimizer, str]:
    """AdamW or SGD over two groups: matrices decay, gains/biases/1-D tensors do not. Always
    the fused optimizers: they clip inside the step and fall back to their reference path
    tensor by tensor where the kernels cannot run (decided once, in ``workbench.optim``)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    norm, value = cfg.max_grad_norm, cfg.clip_value
    if cfg.optimizer == "adamw":
        return FusedAdamW(groups, lr=lr, max_grad_norm=norm, clip_value=value), "FusedAdamW"
    sgd = FusedSGD(groups, lr=lr, momentum=cfg.momentum, max_grad_norm=norm, clip_value=value)
    return sgd, "FusedSGD"


class Trainer(TrainerWeights):
    """Training model + tokenizer + optimizer + schedule."""

    def __init__(
        self, model: Transformer, tokenizer: Tokenizer, cfg: LearningConfig, device: torch.device
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.device = device
        self.base_lr = cfg.learning_rate
        self.updates = 0
        self.optimizer, self.optimizer_name = make_optimizer(model, cfg, self.base_lr)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.yield_point: Callable[[float], float] | None = None
        self.readers: Callable[[], bool] | None = None  # the worker's: anyone reading lately?
        self.undo: UndoPoint | None = None  # the worker's: keeps the state before a write
        # how long a step may wait for readers: this, plus ``cfg.reader_priority`` times what
        # it computed so far (see ``pause``)
        self.yield_budget = 0.05
        self._step_t0 = self._waited = 0.0
        self._shared_threads = 1 << 30  # in an update: the worker's count, kept while read
        # in an update that takes the free cores (``_grows``): whether to look for them again
        # at the next block (at the first, and once the readers that made it leave them left)
        self._grows = self._regrow = False
        # models that carry the yield hooks; weak, so a discarded model's id reused by a new
        # one does not make the new one look hooked
        self._hooked: weakref.WeakSet[Transformer] = weakref.WeakSet()
        self._install_yield_hooks()
        self._editor: Editor | None = None
        self.metadata: dict[str, Any] = {}  # the loaded file's own (GGUF: general.name, ...)
        self.last_edit: EditResult | None = None
        self._shadows: Shadows | None = None  # bfloat16 copies, with compute_dtype bfloat16
        # the model a fine-tuning step last wrote (weak): its edit statistics go stale at every
        # step, so idle time does not recompute them until an edit comes (see prepare)
        self._finetuned: weakref.ref[Transformer] | None = None

    def editor(self) -> Editor:
        """The locate-and-edit updater of the current model and configuration."""
        cfg, model = self.cfg, self.model
        layer = (
            cfg.edit_layer
            if cfg.edit_layer is not None
            else default_edit_layer(model.cfg.n_layer, cfg.edit_store)
        )
        if layer >= model.cfg.n_layer:
            raise LearnerError(
                f"edit_layer {layer} does not exist: the model has {model.cfg.n_layer} layers "
                f"(0..{model.cfg.n_layer - 1}); set edit_layer=None for the default"
            )
        if not editable(model):
            raise LearnerError(
                "this model's MLP outputs pass through a norm (Gemma's post-norms), so an edit "
                "of one projection is not a linear write: use update_method='finetune' or 'auto'"
            )
        ed = self._editor
        if (
            ed is None
            or ed.model is not model
            or ed.layer != layer
            or ed.store != cfg.edit_store
            or ed.layers != _edited_layers(layer, cfg)
        ):
            try:
                ed = Editor(
                    model,
                    self.tokenizer,
                    layer,
                    cfg.edit_steps,
                    _clamp(cfg),
                    cfg.edit_regularization,
                    cfg.edit_spread,
                    cfg.edit_store,
                    cfg.edit_threshold,
                )
            except ValueError as e:
                raise LearnerError(str(e)) from None
            self._editor = ed
        ed.tokenizer = self.tokenizer
        ed.steps, ed.clamp, ed.regularization, ed.threshold = (
            cfg.edit_steps,
            _clamp(cfg),
            cfg.edit_regularization,
            cfg.edit_threshold,
        )
        return ed

    def _install_yield_hooks(self) -> None:
        """Let the worker pause between blocks, forward and backward, when inference runs.

        The hooks travel with deep copies of the model (the published snapshots), so they act
        only on the thread that installed ``yield_point`` (see ``OnlineLearner``).
        """
        if self.model in self._hooked:
            return
        self._hooked.add(self.model)
        trainer = self

        def forward_hook(module: torch.nn.Module, args: Any, output: Tensor) -> None:
            if trainer.yield_point is None:
                return
            trainer.pause()
            if output.requires_grad:
                output.register_hook(lambda grad: trainer.pause())

        for block in self.model.blocks:
            block.register_forward_hook(forward_hook)

    def pause(self) -> None:
        """A point where the worker's step may wait for readers: between blocks, forward and
        backward (the yield hooks), and between the matrices of the bfloat16 copies.

        While readers are about it waits until they have gone, so they run on every core as
        if the learner were idle (``Publisher.yield_to_readers``, ``Publisher.pace``), within
        the step's budget: ``yield_budget`` plus ``cfg.reader_priority`` times what the step
        has computed. Past it the step goes on beside them, on the worker's own cores."""
        fn = self.yield_point
        if fn is None:
            return
        now = time.perf_counter()
        computed = now - self._step_t0 - self._waited
        prio = self.cfg.reader_priority
        left = self.yield_budget + prio * computed - self._waited if prio > 0 else 0.0
        # Past the budget, a zero wait still says whether anyone reads (> 0: readers).
        waited = fn(max(0.0, left))
        self._waited += waited
        have = torch.get_num_threads()
        if waited > 0:
            if have > self._shared_threads:
                torch.set_num_threads(self._shared_threads)  # leave the readers a core
            self._regrow = self._grows
        elif self._regrow and not self._readers_now():  # gone: take the cores back
            self._regrow = False
            if (want := max(have, _free_cores(have))) != have:
                torch.set_num_threads(want)

    def rebuild_optimizer(self) -> None:
        self.optimizer, self.optimizer_name = make_optimizer(self.model, self.cfg, self.base_lr)

    def lr_at(self, update: int) -> float:
        """Learning rate for the 1-based ``update``."""
        cfg = self.cfg
        if cfg.lr_schedule == "constant":
            return self.base_lr
        if update <= cfg.warmup_updates:
            return self.base_lr * update / cfg.warmup_updates
        span = max(1, cfg.total_updates - cfg.warmup_updates)
        progress = min(1.0, (update - cfg.warmup_updates) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)

    @property
    def current_lr(self) -> float:
        return self.lr_at(max(1, self.updates))

    # ------------------------------------------------------------------ one update
    @property
    def method(self) -> str:
        """How updates change the weights: ``update_method``, with "auto" resolved to "edit"
        for a pretrained model (weights from a file) whose MLPs can be edited, "finetune"
        otherwise."""
        method = self.cfg.update_method
        if method == "auto":
            return "edit" if self.model.pretrained and editable(self.model) else "finetune"
        return method

    def prepare(self) -> bool:
        """Compute what the next update needs ahead of it; whether there was anything to do."""
        if self.method != "edit" or self.cfg.loss_fn != "cross_entropy":
            return False
        if self._finetuned is not None and self._finetuned() is self.model:
            # Fine-tuning (labels, self-supervised text) voids the statistics at every step:
            # recomputing them whenever the worker idled (SmolLM2: ~5 s each) held up every
            # next label's update. The next edit measures them itself.
            return False
        editor = self.editor()
        if editor.ready():
            return False
        editor.covariance()
        return True

    def step(self, examples: Sequence[Encoded]) -> tuple[float, float | None]:
        """One update on ``examples``; returns (weighted loss before it, grad norm or None).

        With ``update_method="edit"`` (or "auto" on a pretrained model) the supervised
        examples are edited in (no optimizer step) and only the others (self-supervised, or
        ``method="finetune"``), if any, take an optimizer step; see ``edited``. With
        ``train_threads=None`` the update takes the cores nobody else runs on, gives them
        back at the first block where a reader waits (the yield hooks) and takes them again at
        the first block after the readers left: an edit's residual steps on SmolLM2 take
        0.24 s each on 2 threads, 0.37 s on the worker's one, and a user asking a question
        every half second keeps the worker on one for only about a quarter of the time."""
        own = self._shared_threads = torch.get_num_threads()
        self._step_t0, self._waited = time.perf_counter(), 0.0
        want = own
        self._grows = self.cfg.train_threads is None and self.yield_point is not None
        if self._grows:
            if self._readers_now():
                self._regrow = True  # the free cores, once the readers left
            else:
                want = max(own, _free_cores(own))
        if want != own:
            torch.set_num_threads(want)
        try:
            edited = self.edited(examples)
            if edited:
                return self._edit(examples, edited)
            return self._finetune_step(examples)
        finally:
            if torch.get_num_threads() != own:
                torch.set_num_threads(own)
            self._shared_threads = 1 << 30
            self._grows = self._regrow = False

    def _readers_now(self) -> bool:
        """Whether readers are about (free_cores does not count them): the worker's own
        account, else a zero wait, which still says whether anyone reads."""
        if self.readers is not None:
            return self.readers()
        return self.yield_point is not None and self.yield_point(0.0) > 0

    def edited(self, examples: Sequence[Encoded]) -> list[Encoded]:
        """Which of ``examples`` an update edits in; the others take an optimizer step.

        An example's own ``method`` wins over the learner's; an edit needs a target, the
        cross-entropy loss and a model whose MLPs can be edited (else it is fine-tuned)."""
        if self.cfg.loss_fn != "cross_entropy":
            return []
        method = self.method
        chosen = [
            e for e in examples if (e.method or method) == "edit" and e.input_len < len(e.ids)
        ]
        if chosen and method != "edit" and not editable(self.model):
            return []  # (with update_method="edit" itself, editor() says why it cannot)
        return chosen

    def _edit(
        self, examples: Sequence[Encoded], supervised: list[Encoded]
    ) -> tuple[float, float | None]:
        self.model.train()
        self._finetuned = None  # edits again: idle time keeps their statistics ready
        if self.undo is not None:
            self.undo.ensure()  # an edit writes the weights itself
        pad = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else 0
        result = self.editor().update(supervised, pad)
        self.last_edit = result
        loss = result.loss * sum(e.weight for e in supervised)
        taught = {id(e) for e in supervised}
        rest = [e for e in examples if id(e) not in taught]
        # the update's "norm": the edit's largest residual (None when nothing changed)
        grad_norm = result.delta_norm if result.edited else None
        if rest:  # the fine-tuned examples: an optimizer step, which counts the update
            rest_loss, rest_norm = self._finetune_step(rest)
            grad_norm = rest_norm if grad_norm is None else grad_norm
            loss += rest_loss * sum(e.weight for e in rest)
        else:
            self.updates += 1
        return loss / sum(e.weight for e in examples), grad_norm

    def _finetune_step(self, examples: Sequence[Encoded]) -> tuple[float, float | None]:
        cfg = self.cfg
        model = self.model
        model.train()
        lr = self.lr_at(self.updates + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        micro = cfg.batch_size
        total_w = sum(e.weight for e in examples)
        loss_sum = 0.0
        kept_w = 0.0
        pad = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else 0
        shadows = self.shadows()
        for chunk in _passes(examples, micro):
            with nullcontext() if shadows is None else shadows.swapped():
                per, right = self._per_example_loss(chunk, pad)  # (b,), (b,)
            if not bool(torch.isfinite(per).all()):
                self.optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(
                    "the loss became NaN or Inf; the weights were left unchanged: "
                    "lower the learning rate or check the loaded weights"
                )
            w = torch.tensor([e.weight for e in chunk], device=per.device)
            loss_sum += float((per.detach() * w).sum())
            if cfg.skip_known_below is not None:
                w = w * (per.detach() >= cfg.skip_known_below)
            if right is not None:  # stop when right: what the model already answers is left be
                w = w * ~right
            kept_w += float(w.sum())
            if float(w.sum()) > 0 and per.requires_grad:
                ((per * w).sum() / total_w).backward()
                if shadows is not None:
                    shadows.collect()  # into the float32 gradients, pass by pass
        loss = loss_sum / total_w
        grad_norm: float | None = None
        if kept_w > 0:
            if kept_w < total_w:  # renormalize to the examples that still carry a gradient
                scale = total_w / kept_w
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(scale)
            grad_norm = self._optimizer_step()
            self._finetuned = weakref.ref(model)
        self.updates += 1
        return loss, grad_norm

    def _per_example_loss(self, chunk: list[Encoded], pad: int) -> tuple[Tensor, Tensor | None]:
        """Per-example losses ``(b,)`` and, with ``stop_when_right``, which examples the model
        already answers: every target token is its greedy choice, ahead of the runner-up by at
        least ``stop_when_right`` nats."""
        cfg = self.cfg
        if cfg.loss_fn == "contrastive":
            return self._contrastive(chunk, pad), None
        batch = collate(chunk, pad, self.device)
        h = self.model.hidden(batch.ids)  # (b, T, C)
        mask = batch.labels != losses.IGNORE  # (b, T)
        rows, cols = mask.nonzero(as_tuple=True)  # the N positions that carry a loss
        # The vocabulary head only where a loss is: most positions of a prompt have none,
        # and the head (49k tokens for SmolLM2) is a large share of a step.
        logits = self.model.head(h[rows, cols])  # (N, V)
        targets = batch.labels[rows, cols]  # (N,)
        fn = losses.cross_entropy if cfg.loss_fn == "cross_entropy" else losses.mse
        token = fn(logits[:, None, :], targets[:, None], reduction="none").float()  # (N,)
        counts = mask.sum(dim=1).clamp_min(1)  # (b,)
        per = token.new_zeros(len(chunk)).index_add(0, rows, token) / counts
        if cfg.stop_when_right is None:
            return per, None
        with torch.no_grad():
            logp = logits.detach().float().log_softmax(dim=-1)  # (N, V)
            top2 = logp.topk(2, dim=-1)  # (N, 2)
            ok = (top2.indices[:, 0] == targets) & (
                top2.values[:, 0] - top2.values[:, 1] >= cfg.stop_when_right
            )
            wrong = torch.zeros(len(chunk), dtype=torch.long, device=per.device)
            wrong.index_add_(0, rows, (~ok).long())
            right = (wrong == 0) & mask.any(dim=1)
        return per, right

    def _contrastive(self, chunk: list[Encoded], pad: int) -> Tensor:
        """Input vs target pooled states; a self-supervised input is its own positive under
        dropout (feature dropout on the pooled states when the model has none)."""
        anchors, positives = [], []
        for e in chunk:
            supervised = e.input_len < len(e.ids)
            anchors.append(e.ids[: e.input_len] if supervised else e.ids)
            positives.append(e.ids[e.input_len :] if supervised else e.ids)
        a = self._pooled(anchors, pad)
        p = self._pooled(positives, pad)
        if self.model.cfg.dropout == 0.0:
            a = self._feature_dropout(a)
            p = self._feature_dropout(p)
        return losses.contrastive(a, p, reduction="none")

    def _pooled(self, seqs: list[tuple[int, ...]], pad: int) -> Tensor:
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = True
        hidden = self.model.hidden(ids.to(self.device))
        return losses.mean_pool(hidden, mask.to(self.device))

    def _feature_dropout(self, x: Tensor, p: float = 0.1) -> Tensor:
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= p
        return x * keep / (1 - p)

    def shadows(self) -> Shadows | None:
        """The bfloat16 copies fine-tuning steps run on (None: they compute in float32); made
        again for a new model."""
        dtype = resolve_compute(self.cfg.compute_dtype, self.model, self.device)
        if dtype != torch.bfloat16:
            return None  # (copies made for this model are kept for a switch back)
        have = self._shadows
        if have is None or have.model is not self.model or not have.current():
            self._shadows = Shadows(self.model, self.pause)
        return self._shadows

    def _optimizer_step(self) -> float | None:
        if self.undo is not None:  # keeps the weights before the step (by swap, when it can)
            self.undo.step(self.optimizer)
        else:
            self.optimizer.step()  # clips (value, then norm) inside the step
        norm = getattr(self.optimizer, "last_grad_norm", None)
        return None if norm is None else float(norm)

    # ------------------------------------------------------------------ state


def _clamp(cfg: LearningConfig) -> float:
    if cfg.edit_clamp is not None:
        return cfg.edit_clamp
    return 8.0 if cfg.edit_store == "memory" else 4.0


def _edited_layers(layer: int, cfg: LearningConfig) -> tuple[int, ...]:
    if cfg.edit_store == "memory":
        return (layer,)
    return tuple(range(max(0, layer - cfg.edit_spread + 1), layer + 1))


def _passes(examples: Sequence[Encoded], size: int, slack: int = 32) -> list[list[Encoded]]:
    """Split an update into passes of at most ``size`` examples of similar length.

    Sorted by length (stably: deterministic), a pass also ends where the next example is more
    than twice as long as the pass's shortest (and ``slack`` tokens longer), so one long example
    pads only its own pass instead of every example of the update.

    >>> from workbench.batching import Encoded
    >>> ex = [Encoded(i, (0,) * n, (0,) * n, 1.0, n) for i, n in enumerate([300, 9, 12, 10])]
    >>> [[len(e.ids) for e in p] for p in _passes(ex, 16)]
    [[9, 10, 12], [300]]
    """
    out: list[list[Encoded]] = []
    for e in sorted(examples, key=lambda e: len(e.ids)):
        last = out[-1] if out else None
        n = len(e.ids)
        if (
            last is not None
            and len(last) < size
            and (n <= 2 * len(last[0].ids) or n - len(last[0].ids) <= slack)
        ):
            last.append(e)
        else:
            out.append([e])
    return out
