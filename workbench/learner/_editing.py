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
   is optimized (Adam, a few dozen steps through the layers above only) until the examples'
   targets come out, its norm bounded by ``edit_clamp`` times the layer's own output there.
   Examples the model already answers (greedy, with a loss below ``KNOWN_LOSS``) add no
   residual: a repeated correction does not keep pushing.
3. **Write-in.** ``dW = R Kᵀ (K Kᵀ + λ C)⁻¹``: the least-squares change that maps each key
   ``k_i`` to ``W k_i + delta_i`` while leaving ``W k`` unchanged for the keys of generic text
   (``C``: their second moment, measured once per loaded model on a fixed corpus).

Keys of earlier layers and of this layer's own input projections do not change with an edit,
so ``C`` stays valid until the weights are replaced or fine-tuned. Replayed examples enter as
constraints (their residual stays near zero when they are still answered), so earlier edits are
kept (MEMIT's batch form). Self-supervised examples (no target) cannot be edited in; the trainer
fine-tunes on those.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench import losses
from workbench.learner.batching import Encoded, collate
from workbench.models import Transformer
from workbench.models.transformer import Block
from workbench.tokenizers import Tokenizer

EDIT_DONE_LOSS = 0.05  # mean target loss (nats/token) an edit aims for
# An example the model already answers (every target token its greedy choice, mean loss below
# this) takes no residual: a repeated correction does not keep pushing.
KNOWN_LOSS = 0.1
MAX_PASSES = 4  # edit passes per update (see Editor.update)
COVARIANCE_TOKENS = 8192  # generic tokens whose keys define "leave everything else alone"
_WINDOW = 256  # tokens per forward pass of the covariance corpus
# Adam step of the residuals, in typical output per element (SmolLM2: 3 takes 20-45% fewer
# steps than 1 to the same loss)
_LR = 3.0
_RIDGE = 1e-3  # of the mean key energy, added to C's diagonal (C is estimated, not exact)


def default_edit_layer(n_layer: int) -> int:
    """The edited layer when none is configured: about a quarter of the way up, where
    factual recall reads the subject (ROME's causal traces; SmolLM2-135M: layer 8 of 30).

    >>> default_edit_layer(30), default_edit_layer(12), default_edit_layer(2)
    (8, 3, 1)
    """
    return max(0, min(n_layer - 1, round(0.27 * n_layer)))


def generic_corpus() -> str:
    """A fixed generic English text present on every Python: the standard library's topic
    help (``pydoc_data.topics``), in a stable order. Its keys stand for "everything the edit
    must leave alone"; a model's own domain text would do as well, this one needs nothing."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


@dataclass
class EditResult:
    loss: float  # weighted mean target loss before the edit
    edited: bool  # whether the weights changed
    groups: int  # key words with a residual
    steps: int  # optimization steps of the residuals
    delta_norm: float  # largest residual norm


# ============================================================================ key words
_RUN = re.compile(r"(\W*)(\w*)(.*)", re.DOTALL)


def words_of(pieces: Sequence[str]) -> list[tuple[str, int, int]]:
    """Split decoded token pieces into words: ``(text, first_token, last_token)``.

    A word is a run of word characters across tokens with no space or punctuation between.

    >>> words_of(["The", " capital", " of", " O", "str", "evia", " is"])
    [('The', 0, 0), ('capital', 1, 1), ('of', 2, 2), ('Ostrevia', 3, 5), ('is', 6, 6)]
    >>> words_of(["Q", ":", " What", "?\\n", "A", ":"])
    [('Q', 0, 0), ('What', 2, 2), ('A', 4, 4)]
    """
    out: list[tuple[str, int, int]] = []
    text, first, last = "", -1, -1
    for i, piece in enumerate(pieces):
        lead, run, rest = _RUN.fullmatch(piece).groups()  # type: ignore[union-attr]
        if text and (lead or not run):
            out.append((text, first, last))
            text = ""
        if run:
            if not text:
                first = i
            text, last = text + run, i
        if rest and text:  # punctuation or a space after the word ends it
            out.append((text, first, last))
            text = ""
    if text:
        out.append((text, first, last))
    return out


def choose_keys(
    words: Sequence[Sequence[tuple[str, int, int]]], surprisal: Sequence[Sequence[float]]
) -> list[tuple[str, int] | None]:
    """Per example, its key word and the position of the word's last token (None: no word).

    Words shared by two or more examples are preferred (the thing being taught recurs across
    its paraphrases); among them the one the model finds most surprising on average (an
    invented name beats "capital"). ``surprisal[i][t]``: nats of token ``t`` of example ``i``.

    >>> w = [[("capital", 0, 0), ("Ostrevia", 1, 2)], [("Ostrevia", 0, 1), ("is", 2, 2)]]
    >>> s = [[0.5, 6.0, 3.0], [7.0, 2.0, 0.1]]
    >>> choose_keys(w, s)
    [('Ostrevia', 2), ('Ostrevia', 1)]
    """
    score: dict[str, list[float]] = {}
    df: dict[str, int] = {}
    for ws, sur in zip(words, surprisal, strict=True):
        for text in {w[0] for w in ws}:
            df[text] = df.get(text, 0) + 1
        for text, a, b in ws:
            score.setdefault(text, []).append(sum(sur[a : b + 1]))
    mean = {t: sum(v) / len(v) for t, v in score.items()}
    out: list[tuple[str, int] | None] = []
    for ws in words:
        if not ws:
            out.append(None)
            continue
        shared = [w for w in ws if df[w[0]] >= 2]
        pool = shared or list(ws)
        best = max(pool, key=lambda w: (mean[w[0]], w[2]))
        last = max(b for t, _, b in ws if t == best[0])  # its last occurrence
        out.append((best[0], last))
    return out


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
    ) -> None:
        if not 0 <= layer < model.cfg.n_layer:
            raise ValueError(f"edit_layer must be in [0, {model.cfg.n_layer - 1}], got {layer}")
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.steps = steps
        self.clamp = clamp
        self.regularization = regularization
        self._cov: Tensor | None = None
        self._cov_for: tuple[tuple[int, int], ...] = ()
        self._out_norm = 1.0  # mean norm of the layer's MLP output on the generic corpus

    def _key_weights(self) -> tuple[tuple[int, int], ...]:
        """Identity and in-place version of every weight the edited layer's keys depend on:
        any load, restore or optimizer step bumps a version (``Tensor._version``), so a stale
        covariance is never used, whichever path changed the weights."""
        m, layer = self.model, self.layer
        down = _block(m, layer).mlp.down
        skip = {id(p) for p in down.parameters()}
        params = [*m.tok_emb.parameters()]
        if hasattr(m, "pos_emb"):
            params += [*m.pos_emb.parameters()]
        for block in m.blocks[: layer + 1]:
            params += [p for p in block.parameters() if id(p) not in skip]
        return tuple((id(p), p._version) for p in params)

    # ------------------------------------------------------------------ covariance
    def ready(self) -> bool:
        """Whether the covariance is measured for the current weights."""
        return self._cov is not None and self._cov_for == self._key_weights()

    @torch.no_grad()
    def covariance(self) -> Tensor:
        """Second moment of the edited layer's keys on the generic corpus, float64, ridged."""
        state = self._key_weights()
        if self._cov is not None and state == self._cov_for:
            return self._cov
        m = self.model
        ids = self.tokenizer.encode(generic_corpus())[:COVARIANCE_TOKENS]
        width = _block(m, self.layer).mlp.down.in_features
        cov = torch.zeros(width, width, dtype=torch.float64, device=m.device)
        n, out_norm = 0, 0.0
        down = _block(m, self.layer).mlp.down
        for i in range(0, len(ids), _WINDOW):
            chunk = torch.tensor([ids[i : i + _WINDOW]], device=m.device)
            k = self._keys(chunk)[0]  # (T, width)
            out_norm += float(down(k).norm(dim=-1).sum())
            k = k.double()
            cov += k.T @ k
            n += k.shape[0]
        cov /= max(1, n)
        self._out_norm = out_norm / max(1, n)
        cov += _RIDGE * cov.diagonal().mean() * torch.eye(width, dtype=cov.dtype, device=m.device)
        self._cov, self._cov_for = cov, state
        return cov

    def _keys(self, ids: Tensor) -> Tensor:
        m, layer = self.model, self.layer
        x, rope = m.embed(ids)
        x = m.run_blocks(x, rope, 0, layer)
        block = _block(m, layer)
        return block.mlp.keys(block.mlp_norm(block.attend(x, rope, None, layer)))

    # ------------------------------------------------------------------ one edit
    def update(self, examples: Sequence[Encoded], pad: int) -> EditResult:
        """Edit ``examples`` in, in up to ``MAX_PASSES`` passes: the write-in realizes a
        residual only approximately (a held-out phrasing's key is not any one example's), so
        while the examples are not yet answered another pass adds what is missing. A later
        submission of the same examples then finds them answered and changes nothing."""
        m, layer, tok = self.model, self.layer, self.tokenizer
        was_training = m.training
        m.eval()  # dropout off: the residuals must be exact
        try:
            first = result = self._update(examples, pad, m, layer, tok)
            steps, norm = result.steps, result.delta_norm
            for _ in range(MAX_PASSES - 1):
                if not result.edited:
                    break
                result = self._update(examples, pad, m, layer, tok)
                steps, norm = steps + result.steps, max(norm, result.delta_norm)
            return EditResult(first.loss, first.edited, first.groups, steps, norm)
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
            out = mid + block.mlp.down(keys)  # the layer's output
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
        k_rows = keys[idx, pos]  # (n, width)

        # residuals, optimized through the layers above
        delta = torch.zeros(len(names), out.shape[-1], device=m.device, requires_grad=True)
        # the bound is the layer's typical output on generic text, not at the key itself: there
        # it includes earlier edits, and repeated edits would grow without limit
        cov = self.covariance()  # also measures _out_norm
        bound = self.clamp * self._out_norm
        opt = torch.optim.Adam([delta], lr=_LR * self._out_norm / math.sqrt(out.shape[-1]))
        sel = gid >= 0
        steps = 0
        while steps < self.steps:
            steps += 1
            add = torch.zeros_like(out)
            add = add.index_put((idx[sel], pos[sel]), delta[gid[sel]])
            h = m.norm(m.run_blocks(out + add, rope, layer + 1, len(m.blocks)))
            tok_loss = F.cross_entropy(m.head(h[rows, cols]).float(), targets, reduction="none")
            per_now = _per_example(tok_loss, rows, B)
            loss = (per_now * weights).sum() / weights.sum()
            if bool((per_now.detach() < EDIT_DONE_LOSS).all()):
                break
            # only the residuals' gradient: the weights' would double the cost of a step
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            opt.step()
            with torch.no_grad():
                norms = delta.norm(dim=-1, keepdim=True)
                delta.mul_((bound / norms.clamp_min(1e-12)).clamp(max=1.0))

        # write-in: W' k = W k + delta_g for the mean key of each word (its paraphrases' keys
        # differ by context; their mean is the word's own direction, which a held-out phrasing
        # shares: ROME's k*), W' k_i = W k_i for examples already answered, W' k ~ W k on
        # generic keys
        d = delta.detach()
        w_rows = weights[idx]
        g_keys = torch.stack(
            [
                (k_rows[gid == g] * w_rows[gid == g, None]).sum(0) / w_rows[gid == g].sum()
                for g in range(len(names))
            ]
        )
        g_w = torch.stack([w_rows[gid == g].sum() for g in range(len(names))])
        rest = ~sel
        dW = write_in(
            torch.cat([g_keys, k_rows[rest]]),
            torch.cat([d, d.new_zeros(int(rest.sum()), d.shape[1])]),
            torch.cat([g_w, w_rows[rest]]),
            cov,
            self.regularization,
        )
        if not bool(torch.isfinite(dW).all()):
            raise FloatingPointError(
                "the edit came out NaN or Inf; the weights were left unchanged: "
                "lower edit_clamp or raise edit_regularization"
            )
        with torch.no_grad():
            block.mlp.down.weight.add_(dW.to(block.mlp.down.weight.dtype))
        return EditResult(loss_before, True, len(names), steps, float(d.norm(dim=-1).max()))


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
