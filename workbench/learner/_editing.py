"""Locate-and-edit updates: teach by rewriting one MLP projection, and nothing else.

Fine-tuning moves every weight a little, and Adam's first steps move each by about the learning
rate whatever its gradient: teaching SmolLM2-135M one invented fact that way changed the answers
of 15-31 of 50 unrelated control facts and made "The capital of <another invented country> is"
answer the taught city (bench/efficacy.py). An *edit*, after ROME and MEMIT (Meng et al., 2022,
2023), changes only the down projection ``W`` of one MLP layer, and only along the directions
the taught examples' *key word* takes there:

1. **Key positions.** The key word of an example is the most surprising word (to the model, in
   context) among the words the update's examples share, e.g. the invented subject of a fact's
   paraphrases; an example sharing none uses its own most surprising word. In a conversation
   only the last user turn is searched (not the template's text or the system prompt). The key is the down
   projection's input ``k`` at the word's last token, in the edited layer.
2. **A residual per key word.** A vector ``delta`` added to the layer's output at those positions
   (with the memory: at every token the memory will apply it to, ``_edit_gating``) is
   optimized (Adam, a few dozen steps through the layers above only, each example from its
   own first such token, ``_edit_above``) until the examples' targets come out, its norm
   bounded by ``edit_clamp`` times the layer's own output there.
   Examples the model already answers (greedy, with a loss below ``KNOWN_LOSS``) add no
   residual: a repeated correction does not keep pushing.
3. **Keep it.** By default (``store="memory"``) each word's residual goes into the model's
   edit memory under the word's mean key (``workbench.models.memory``): the weights do not
   change, and only tokens whose key lies within the memory's threshold of that key receive
   the residual. On SmolLM2-135M, 20 facts taught one after another this way changed none of
   50 controls and left general-text perplexity exactly as it was.
   With ``store="weights"`` the residuals are written into the down projections instead:
   ``dW = R Kᵀ (K Kᵀ + λ C)⁻¹``: the least-squares change that maps each key
   ``k_i`` to ``W k_i + delta_i`` while leaving ``W k`` unchanged for the keys of generic text
   (``C``: their second moment, measured once per loaded model on Python's topic help; the
   model's own samples can join it, see ``SAMPLE_SHARE``).

Keys of earlier layers and of this layer's own input projections do not change with an edit,
so ``C`` stays valid until the weights are replaced or fine-tuned. Replayed examples enter as
constraints (their residual stays near zero when they are still answered), so earlier edits are
kept (MEMIT's batch form). What is not edited (``Trainer.edited``) the trainer fine-tunes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench import losses
from workbench.batching import Encoded, collate
from workbench.learner._edit_above import split
from workbench.learner._edit_gating import gating, plan, weighted_mean
from workbench.learner._edit_keys import choose_keys, generic_corpus, self_samples, words_of
from workbench.models import Transformer
from workbench.models.memory import DEFAULT_THRESHOLD, EditMemory
from workbench.models.transformer import Block
from workbench.tokenizers import Tokenizer

EDIT_STORES = ("memory", "weights")  # beside the layer (models.memory), or in the weights
# The residual loop stops when every example it teaches is answered: each target token its
# greedy choice and the mean target loss (nats/token) below this, a margin under KNOWN_LOSS.
# (SmolLM2, memory at layer 5, 20 facts one at a time: 59/60 probes right stopping here, 59/60
# going on to a loss of 0.01, with 20% more steps.)
EDIT_DONE_LOSS = 0.05
# An example the model already answers (every target token its greedy choice, mean loss below
# this) takes no residual: a repeated correction does not keep pushing.
KNOWN_LOSS = 0.1
MAX_PASSES = 4  # edit passes per update; in the memory, one loop this many times as long
COVARIANCE_TOKENS = 8192  # generic tokens whose keys define "leave everything else alone"
# Share of them from the model's own samples (_edit_keys.self_samples). Off: with half of the
# corpus sampled, 10 facts taught in sequence (SmolLM2) left 20/30 probes right, 16/40 controls
# wrong and perplexity +9.2%, against 23/30, 14/40 and +3.0% with Python's docs alone.
SAMPLE_SHARE = 0.0
_WINDOW = 256  # tokens per forward pass of the covariance corpus
# Adam step of the residuals, in typical output per element (SmolLM2: 3 takes 20-45% fewer
# steps than 1 to the same loss)
_LR = 3.0
# examples run through the layers above together in the residual loop: a part's graph is freed
# before the next runs (6 facts x 8 paraphrases in one update peaked at 4.5 GB in one batch)
_PART = 12
_RIDGE = 1e-3  # of the mean key energy, added to C's diagonal (C is estimated, not exact)


def default_edit_layer(n_layer: int, store: str = "weights") -> int:
    """The edited layer when none is configured. Written into weights: a quarter of the way
    up, where factual recall reads the subject (ROME's causal traces; SmolLM2-135M: layer 8).
    Kept in the memory: a sixth (layer 5), where a residual has more layers to shape the answer
    in any phrasing (SmolLM2, 20 facts: 59/60 probes right at layer 5, 55/60 at layer 8).

    >>> [default_edit_layer(n) for n in (30, 12, 2)], default_edit_layer(30, "memory")
    ([8, 3, 1], 5)
    """
    share = 0.17 if store == "memory" else 0.27
    return max(0, min(n_layer - 1, round(share * n_layer)))


@dataclass
class EditResult:
    loss: float  # weighted mean target loss before the edit
    edited: bool  # whether the weights changed
    groups: int  # key words with a residual
    steps: int  # optimization steps of the residuals
    delta_norm: float  # largest residual norm
    # the weighted mean target loss of the examples with a residual, as the loop last saw it
    # (the edited model's with the memory; a write-in's is approximate); or ``loss``
    loss_after: float = math.nan
    done: bool = False  # the loop ended with each example greedy and below EDIT_DONE_LOSS


# ============================================================================ the editor
class Editor:
    """Edits one layer of ``model``; owns that layer's key covariance (computed on first use)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        layer: int,
        steps: int,
        clamp: float,
        regularization: float,
        spread: int = 1,
        store: str = "memory",
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if not 0 <= layer < model.cfg.n_layer:
            raise ValueError(f"edit_layer must be in [0, {model.cfg.n_layer - 1}], got {layer}")
        if not editable(model):
            raise ValueError(
                "this model's MLP output passes through a norm (Gemma's post-norms), so an edit "
                "of its down projection is not a linear write: use update_method='finetune'"
            )
        if spread < 1:
            raise ValueError(f"edit_spread must be at least 1, got {spread}")
        if store not in EDIT_STORES:
            raise ValueError(f"edit_store must be one of {EDIT_STORES}, got {store!r}")
        held = model.edit_memory
        if store == "memory" and held is not None and len(held) and held.layer != layer:
            raise ValueError(
                f"the edit memory holds {len(held)} taught words at layer {held.layer}: keep "
                f"edit_layer={held.layer} (or reset_to_base() to drop them)"
            )
        self.store = store
        self.threshold = threshold
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        # the edited layers: ``spread`` of them, ending at ``layer`` (where the residual is found)
        self.layers = tuple(range(max(0, layer - spread + 1), layer + 1))
        if store == "memory":  # the memory sits beside the layer where the residual is found
            self.layers = (layer,)
        self.steps = steps
        self.clamp = clamp
        self.regularization = regularization
        self._cov: dict[int, Tensor] = {}
        self._cov_for: tuple[tuple[int, int], ...] = ()
        self._out_norm = 1.0  # mean norm of the top layer's MLP output on the generic corpus
        # per layer and key word, the mean key of its latest edit and its weight: later edits
        # keep what these keys give (AlphaEdit's point: sequential edits must not undo each
        # other), except an edit of the same word, which replaces its entry (keeping the old
        # output there would fight the new residual on an almost equal key)
        self._kept: dict[int, dict[str, tuple[Tensor, Tensor]]] = {}
        self._pending: dict[int, dict[str, tuple[Tensor, Tensor]]] = {}

    def _key_weights(self) -> tuple[tuple[int, int], ...]:
        """Identity and in-place version of every weight the edited layers' keys depend on,
        except the edited projections themselves: any load, restore or optimizer step bumps a
        version (``Tensor._version``), so a stale covariance is never used, whichever path
        changed the weights. (An edit of a lower layer moves the keys of the layers above it a
        little; the covariance, a statistic of generic text the edits avoid, is kept.)"""
        m = self.model
        skip = {id(p) for layer in self.layers for p in _block(m, layer).mlp.down.parameters()}
        params = [*m.tok_emb.parameters()]
        if hasattr(m, "pos_emb"):
            params += [*m.pos_emb.parameters()]
        for block in m.blocks[: self.layer + 1]:
            params += [p for p in block.parameters() if id(p) not in skip]
        return tuple((id(p), p._version) for p in params)

    # ------------------------------------------------------------------ covariance
    def ready(self) -> bool:
        """Whether the covariances are measured for the current weights."""
        return self._cov_for == self._key_weights()

    @torch.no_grad()
    def covariance(self) -> dict[int, Tensor]:
        """Per edited layer, the second moment of its keys on the generic corpus, float64,
        ridged (none with the memory, which needs only the typical output ``_out_norm``). New
        weights (a load, a fine-tuning step) void it and the kept edit keys."""
        state = self._key_weights()
        if state == self._cov_for:
            return self._cov
        m = self.model
        n_own = int(COVARIANCE_TOKENS * SAMPLE_SHARE)
        ids = self.tokenizer.encode(generic_corpus())[: COVARIANCE_TOKENS - n_own]
        if n_own:
            ids += self_samples(m, self.tokenizer, n_own)
        acc = {
            layer: torch.zeros(w, w, dtype=torch.float64, device=m.device)
            for layer in self.layers
            for w in [_block(m, layer).mlp.down.in_features]
            if self.store == "weights"
        }
        n, out_norm = 0, 0.0
        top = _block(m, self.layer).mlp.down
        for i in range(0, len(ids), _WINDOW):
            chunk = torch.tensor([ids[i : i + _WINDOW]], device=m.device)
            keys = self._keys(chunk)
            out_norm += float(top(keys[self.layer][0]).norm(dim=-1).sum())
            for layer, cov in acc.items():
                cov += (
                    keys[layer][0].T @ keys[layer][0]
                ).double()  # float32 sums of 256 rows, then float64
            n += chunk.shape[1]
        self._out_norm = out_norm / max(1, n)
        for cov in acc.values():
            cov /= max(1, n)
            eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=m.device)
            cov += _RIDGE * cov.diagonal().mean() * eye
        self._cov, self._cov_for = acc, state
        self._kept = {layer: {} for layer in self.layers}
        return acc

    def _keys(self, ids: Tensor) -> dict[int, Tensor]:
        """The down projections' inputs ``(B, T, width)`` of every edited layer."""
        m = self.model
        x, rope = m.embed(ids)
        out = {}
        for i in range(self.layer + 1):
            block = _block(m, i)
            if i not in self.layers:
                x = block(x, rope, None, i)
                continue
            mid = block.attend(x, rope, None, i)
            out[i] = block.mlp.keys(block.mlp_norm(mid))
            x = mid + block.mlp.project(out[i])
        return out

    @torch.no_grad()
    def _through(self, ids: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """Keys of ``layer`` and the stream after the top edited layer, current weights."""
        m = self.model
        x, rope = m.embed(ids)
        x = m.run_blocks(x, rope, 0, layer)
        block = _block(m, layer)
        mid = block.attend(x, rope, None, layer)
        keys = block.mlp.keys(block.mlp_norm(mid))
        x = m.run_blocks(mid + block.mlp.project(keys), rope, layer + 1, self.layer + 1)
        return keys, x

    # ------------------------------------------------------------------ one edit
    def update(self, examples: Sequence[Encoded], pad: int) -> EditResult:
        """Edit ``examples`` in; a later submission of them then finds them answered. Written
        into the weights, in up to ``MAX_PASSES`` passes: the write-in is approximate (a
        held-out phrasing's key is not any one example's), so another pass adds what is
        missing. Kept in the memory, in one loop of up to ``MAX_PASSES * steps`` steps: its
        loss is the edited model's, so a pass would only restart Adam, whose first steps threw
        a nearly answered chat reply back (SmolLM2: 0.108 -> 0.125 nats in a second pass)."""
        m, layer, tok = self.model, self.layer, self.tokenizer
        was_training = m.training
        m.eval()  # dropout off: the residuals must be exact
        self._pending = {}
        try:
            first = result = last = self._update(examples, pad, m, layer, tok)
            steps, norm = result.steps, result.delta_norm
            for _ in range(MAX_PASSES - 1 if self.store == "weights" else 0):
                if not result.edited:
                    break
                result = self._update(examples, pad, m, layer, tok)
                steps, norm = steps + result.steps, max(norm, result.delta_norm)
                last = result if result.edited else last
            for at, kept in self._pending.items():  # the last pass's key of each word
                self._kept.setdefault(at, {}).update(kept)
            after = last.loss_after if first.edited else first.loss
            return EditResult(first.loss, first.edited, first.groups, steps, norm, after, last.done)
        finally:
            m.train(was_training)

    def _update(
        self, examples: Sequence[Encoded], pad: int, m: Transformer, layer: int, tok: Tokenizer
    ) -> EditResult:
        batch = collate(list(examples), pad, m.device)
        B = batch.ids.shape[0]
        weights = torch.tensor([e.weight for e in examples], device=m.device)
        mask = batch.labels != losses.IGNORE
        rows, cols = mask.nonzero(as_tuple=True)
        targets = batch.labels[rows, cols]
        block = _block(m, layer)
        with torch.no_grad():
            x, rope = m.embed(batch.ids)
            x = m.run_blocks(x, rope, 0, layer)
            mid = block.attend(x, rope, None, layer)
            keys = block.mlp.keys(block.mlp_norm(mid))  # (B, T, width)
            out = mid + block.mlp.project(keys)  # the layer's output (memory included)
            h = m.norm(m.run_blocks(out, rope, layer + 1, len(m.blocks)))
            # one example's vocabulary at a time: (B, T, V) floats of long chats would be GBs
            sur = torch.zeros(batch.ids.shape, device=m.device)  # (B, T): nats of token t+1
            at_targets = []
            for i in range(B):
                logp = m.head(h[i]).float().log_softmax(dim=-1)  # (T, V)
                sur[i, :-1] = -logp[:-1].gather(-1, batch.ids[i, 1:, None])[:, 0]
                at_targets.append(logp[cols[rows == i]])
            per, known = answered(torch.cat(at_targets), targets, rows, B)
        loss_before = float((per * weights).sum() / weights.sum())
        if not math.isfinite(loss_before):
            raise FloatingPointError(
                "the loss is NaN or Inf before the edit; the weights were left unchanged: "
                "check the loaded weights"
            )
        todo = ~known
        if not bool(todo.any()):
            return EditResult(loss_before, False, 0, 0, 0.0)

        # key word per example, searched in its input only
        words, surprisal = [], []
        for i, e in enumerate(examples):
            n, k0 = e.input_len, min(e.key_from, e.input_len)
            pieces = [tok.decode([t]) for t in e.ids[k0:n]]
            words.append([(w, a + k0, b + k0) for w, a, b in words_of(pieces)])
            surprisal.append([0.0, *sur[i, : max(0, n - 1)].tolist()])
        keyed = choose_keys(words, surprisal)
        usable = [i for i, k in enumerate(keyed) if k is not None]
        if not any(bool(todo[i]) for i in usable):
            return EditResult(loss_before, False, 0, 0, 0.0)
        names = sorted({keyed[i][0] for i in usable if bool(todo[i])})  # type: ignore[index]
        group_of = {name: g for g, name in enumerate(names)}
        # examples of an untaught word (already learned) keep their output: a zero residual
        pos = torch.tensor([keyed[i][1] for i in usable], device=m.device)  # type: ignore[index]
        idx = torch.tensor(usable, device=m.device)
        gid = torch.tensor(
            [group_of.get(keyed[i][0], -1) for i in usable],  # type: ignore[index]
            device=m.device,
        )

        # residuals, optimized through the layers above
        delta = torch.zeros(len(names), out.shape[-1], device=m.device, requires_grad=True)
        # the bound is the layer's typical output on generic text, not at the key itself: there
        # it includes earlier edits, and repeated edits would grow without limit
        covs = self.covariance()  # also measures _out_norm
        bound = self.clamp * self._out_norm
        opt = torch.optim.Adam([delta], lr=_LR * self._out_norm / math.sqrt(out.shape[-1]))
        sel = gid >= 0
        # Only the examples that carry a residual run through the layers above: the others'
        # losses do not depend on it (and an answered one whose loss sits between
        # EDIT_DONE_LOSS and KNOWN_LOSS would keep the loop from ever stopping early).
        live = torch.unique(idx[sel])
        remap = torch.full((B,), -1, dtype=torch.long, device=m.device)
        remap[live] = torch.arange(len(live), device=m.device)
        on = remap[rows] >= 0
        l_rows, l_cols, l_targets, l_w = remap[rows[on]], cols[on], targets[on], weights[live]
        fixed = None
        if self.store == "memory":  # where the memory will apply each residual, exactly
            held = m.edit_memory
            if held is None or held.layer != layer:
                width, d_model = keys.shape[-1], out.shape[-1]
                held = EditMemory.empty(layer, width, d_model, self.threshold, m.device)
            planned, share = plan(held, keys[idx[sel], pos[sel]], weights[idx[sel]], gid[sel])
            coef, const = gating(planned, share, keys[live], held)
            fixed = const.ne(0).any(-1)
            stream = out[live] + const.to(out.dtype)  # as the memory adds it
        else:  # written in at the key positions
            coef = out.new_zeros(len(live), out.shape[1], len(names), dtype=torch.float32)
            coef[remap[idx[sel]], pos[sel], gid[sel]] = 1.0
            stream = out[live]
        parts = split(m, stream, rope, layer + 1, coef, (l_rows, l_cols, l_targets), _PART, fixed)
        steps, done = 0, False
        # the memory's loop goes on past ``steps`` while an example is not yet answered (as a
        # later submission judges it: KNOWN_LOSS)
        cap = self.steps * (MAX_PASSES if self.store == "memory" else 1)
        while steps < cap:
            steps += 1
            per_now = torch.zeros(len(live), device=m.device)
            wrong = torch.zeros(len(live), device=m.device)  # share of targets not greedy
            grad = torch.zeros_like(delta)
            for p in parts:
                h = p.above.run(p.out + (p.coef @ delta).to(p.out.dtype))
                logits = m.head(m.norm(h[p.rows, p.cols])).float()
                per = _per_example(
                    F.cross_entropy(logits, p.targets, reduction="none"), p.rows, len(p.live)
                )
                per_now[p.live] = per.detach()
                miss = (logits.detach().argmax(-1) != p.targets).float()
                wrong[p.live] = _per_example(miss, p.rows, len(p.live))
                # only the residuals' gradient: the weights' would double the cost of a step
                grad += torch.autograd.grad((per * l_w[p.live]).sum() / l_w.sum(), [delta])[0]
            done = bool(((per_now < EDIT_DONE_LOSS) & (wrong == 0)).all())
            enough = steps >= self.steps and bool(((per_now < KNOWN_LOSS) & (wrong == 0)).all())
            if done or enough or steps == cap:
                break  # (a step after the last evaluation would go unchecked)
            delta.grad = grad
            opt.step()
            with torch.no_grad():
                norms = delta.norm(dim=-1, keepdim=True)
                delta.mul_((bound / norms.clamp_min(1e-12)).clamp(max=1.0))

        d = delta.detach()
        after = float((per_now * l_w).sum() / l_w.sum())
        found = EditResult(loss_before, True, len(names), steps, float(d.norm(dim=-1).max()))
        found.loss_after, found.done = after, done
        if self.store == "memory":
            m.edit_memory = planned.with_values(planned.values + share @ d)
            return found

        # write-in, MEMIT's spread: the stream after the top layer should become
        # ``out + delta`` at each key position; each edited layer, from the bottom, writes an
        # equal share of what is still missing there (the layers above it pass it on), so no
        # one matrix takes the whole change. Per word, the write uses its mean key (its
        # paraphrases' keys differ by context; the mean is the word's own direction, which a
        # held-out phrasing shares: ROME's k*); examples already answered keep their output
        # (a zero residual), as do the kept keys of earlier edits; generic keys stay near
        # their output through the covariance.
        sel_w = weights[idx]
        target = out[idx, pos].clone()
        target[sel] += d[gid[sel]]
        groups = [gid == g for g in range(len(names))]
        g_w = torch.stack([sel_w[g].sum() for g in groups])
        before = {at: _block(m, at).mlp.down.weight.detach().clone() for at in self.layers}
        for j, at in enumerate(self.layers):
            if j == 0 and at == layer:  # one edited layer, weights untouched: already computed
                k_at, now = keys, out
            else:
                k_at, now = self._through(batch.ids, at)
            k_rows = k_at[idx, pos]  # (n, width)
            share = (target - now[idx, pos]) / (len(self.layers) - j)
            g_keys = torch.stack([weighted_mean(k_rows[g], sel_w[g]) for g in groups])
            g_res = torch.stack([weighted_mean(share[g], sel_w[g]) for g in groups])
            kept = [v for word, v in self._kept.get(at, {}).items() if word not in group_of]
            keep_k = torch.cat([k_rows[~sel], *(k[None] for k, _ in kept)])
            keep_w = torch.cat([sel_w[~sel], *(w[None] for _, w in kept)])
            dW = write_in(
                torch.cat([g_keys, keep_k]),
                torch.cat([g_res, g_res.new_zeros(len(keep_k), g_res.shape[1])]),
                torch.cat([g_w, keep_w]),
                covs[at],
                self.regularization,
            )
            if not bool(torch.isfinite(dW).all()):
                with torch.no_grad():
                    for i, w in before.items():
                        _block(m, i).mlp.down.weight.copy_(w)
                raise FloatingPointError(
                    "the edit came out NaN or Inf; the weights were left unchanged: "
                    "lower edit_clamp or raise edit_regularization"
                )
            down = _block(m, at).mlp.down
            with torch.no_grad():
                down.weight.add_(dW.to(down.weight.dtype))
            # each word's latest key (a later pass may edit only some of the words)
            self._pending.setdefault(at, {}).update(
                {name: (g_keys[g].detach(), g_w[g].detach()) for name, g in group_of.items()}
            )
        return found


def editable(model: Transformer) -> bool:
    """Whether edits apply: the MLP's output must be its down projection's (no post-norm)."""
    return not any(getattr(b, "post_norms", False) for b in model.blocks)


def write_in(
    keys: Tensor, residuals: Tensor, weights: Tensor, cov: Tensor, regularization: float
) -> Tensor:
    """The weight change ``dW`` (d, width) with ``dW k_i ~ r_i`` for the edited keys and
    ``dW k ~ 0`` for generic keys of second moment ``cov``: the minimizer of
    ``sum_i w_i |dW k_i - r_i|^2 + regularization * E|dW k|^2``, i.e.
    ``R Kᵀ (K Kᵀ + λ C)⁻¹`` with rows weighted by ``sqrt(w_i)``. Solved in float64."""
    w = weights.sqrt()[:, None].double()
    K = keys.double() * w  # (n, width)
    R = residuals.double() * w  # (n, d)
    A = K.T @ K + regularization * cov.double()
    return torch.linalg.solve(A, K.T @ R).T.to(keys.dtype)


def answered(logp: Tensor, targets: Tensor, rows: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Per example: mean target loss, and whether the model already answers it (every target
    token its greedy choice and the mean loss below ``KNOWN_LOSS``).

    ``logp``: log-probabilities ``(N, V)`` at the N target positions; ``rows``: their example.

    >>> lp = torch.tensor([[0.0, -9.0], [-9.0, 0.0], [-0.6, -0.8]])  # 3 target positions
    >>> per, known = answered(lp, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), 2)
    >>> [round(x, 2) for x in per.tolist()], known.tolist()  # right, and right but unsure
    ([0.0, 0.6], [True, False])
    """
    per = _per_example(-logp.gather(-1, targets[:, None])[:, 0], rows, batch)
    wrong = _per_example((logp.argmax(-1) != targets).float(), rows, batch)
    return per, (wrong == 0) & (per < KNOWN_LOSS)


def _per_example(token_loss: Tensor, rows: Tensor, batch: int) -> Tensor:
    counts = torch.zeros(batch, device=token_loss.device).index_add(
        0, rows, torch.ones_like(token_loss)
    )
    total = torch.zeros(batch, device=token_loss.device).index_add(0, rows, token_loss)
    return total / counts.clamp_min(1)


def _block(model: Transformer, layer: int) -> Block:
    return cast(Block, model.blocks[layer])
