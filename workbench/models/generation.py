"""Decoding for ``Transformer``: greedy, sampling (temperature, top-k, top-p) and beam search.

Everything runs through the model's KV cache; beam search keeps ``B·k`` cached rows and reorders
them by parent beam after each step, so each step is one batched forward of ``B·k`` tokens.
The decoding rules are transformers' own, so the same weights give the same ids: beam scores
are summed log-probabilities, a finished hypothesis scores ``sum / generated_len **
length_penalty``, and ``early_stopping`` (True, False or "never") decides when the search may
stop, as in ``GenerationMixin._beam_search``.

This module knows token ids only; ``workbench.chat.stop_token_ids`` says which ids end a turn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.models.transformer import KVCache

if TYPE_CHECKING:
    from typing import TypeAlias

    from workbench.models.fast import FastTransformer
    from workbench.models.transformer import Transformer

    # What decoding runs on: the model or its fast copy (``workbench.models.fast``), which has
    # the same ``cfg``, ``device``, ``dtype``, ``eval``/``train``, ``model(ids, cache)`` and
    # ``last_logits(ids, cache)``.
    Decoder: TypeAlias = Transformer | FastTransformer

__all__ = ["EarlyStopping", "TokenCallback", "beam_search", "generate"]

TokenCallback = Callable[[Tensor], bool | None]
EarlyStopping = bool | Literal["never"]

_NEG = -1.0e9  # the score of a beam that must not be chosen (transformers' constant)


def _stop_ids(eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, int):
        return (eos_token_id,)
    ids = tuple(int(t) for t in eos_token_id)
    if not ids:
        raise ValueError("eos_token_id is an empty sequence; pass None for no stop token")
    return ids


@torch.inference_mode()
def generate(
    model: Decoder,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    callback: TokenCallback | None = None,
    use_cache: bool = True,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    cache: KVCache | None = None,
) -> Tensor:
    """Continue ``input_ids`` ``(B, T)``; return the full sequences ``(B, T + n)``.

    See ``Transformer.generate``, which calls this. ``cache`` (sampling and greedy only) is a
    cache already holding the keys and values of ``input_ids[:, :cache.pos]``: only the rest of
    the prompt is computed, and the cache keeps the conversation for the next call (a chat reuses
    its history this way). The caller guarantees that the cached prefix matches.
    """
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (B, T) with T > 0, got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")
    stops = _stop_ids(eos_token_id)
    T = input_ids.shape[1]
    if T + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds the context "
            f"({model.cfg.n_ctx}); shorten the prompt or ask for fewer tokens"
        )
    if cache is not None:
        if num_beams > 1 or not use_cache:
            raise ValueError("a prefilled cache needs num_beams=1 and use_cache=True")
        if not 0 <= cache.pos < T or cache.max_len < T + max_new_tokens:
            raise ValueError(
                f"the cache holds {cache.pos} of {T} prompt tokens and has room for "
                f"{cache.max_len}; it must hold fewer than the prompt and fit the prompt plus "
                f"{max_new_tokens} new tokens"
            )
    if num_beams > 1:
        if temperature != 0:
            raise ValueError("beam search is deterministic: use temperature=0 with num_beams > 1")
        if callback is not None:
            raise ValueError(
                "callback (streaming) needs num_beams=1: beam search knows its answer only at the end"
            )
    was_training = model.training
    model.eval()
    try:
        if num_beams > 1:
            return beam_search(
                model,
                input_ids,
                max_new_tokens,
                num_beams,
                eos_token_ids=stops,
                length_penalty=length_penalty,
                early_stopping=early_stopping,
                use_cache=use_cache,
            )
        gen = None
        if seed is not None:
            gen = torch.Generator(device=model.device).manual_seed(seed)
        return _sample_loop(
            model,
            input_ids,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            stops,
            gen,
            callback,
            use_cache,
            cache,
        )
    finally:
        model.train(was_training)


def _sample_loop(
    model: Decoder,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stops: tuple[int, ...],
    gen: torch.Generator | None,
    callback: TokenCallback | None,
    use_cache: bool,
    cache: KVCache | None = None,
) -> Tensor:
    """One token per step and row; rows that stopped are padded with the first stop id."""
    B, T = input_ids.shape
    device = model.device
    out = input_ids.to(device)
    if cache is None and use_cache:
        cache = KVCache(model.cfg, B, T + max_new_tokens, device, model.dtype)
    stop = torch.tensor(stops, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    step_input = out[:, cache.pos :] if cache is not None else out
    for _ in range(max_new_tokens):
        # with a cache: the head (V columns) only where a token is picked, the last position
        logits = model.last_logits(step_input, cache) if use_cache else model(out)[:, -1, :]
        nxt = _sample(logits.float(), temperature, top_k, top_p, gen)  # (B,)
        if stops:
            nxt = torch.where(done, torch.full_like(nxt, stops[0]), nxt)
            done |= torch.isin(nxt, stop)
        out = torch.cat([out, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if callback is not None and callback(nxt):
            break
        if stops and bool(done.all()):
            break
    return out


def _sample(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    gen: torch.Generator | None,
) -> Tensor:
    """Pick one token per row of ``logits`` ``(B, V)``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the mass before it already reaches top_p; the first always stays.
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def _take(t: Tensor, index: Tensor) -> Tensor:
    """Rows of ``t`` ``(B, n, ...)`` picked along dim 1 by ``index`` ``(B, m)``."""
    while index.ndim < t.ndim:
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


@torch.inference_mode()
def beam_search(
    model: Decoder,
    input_ids: Tensor,
    max_new_tokens: int,
    num_beams: int,
    *,
    eos_token_ids: Sequence[int] = (),
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    use_cache: bool = True,
) -> Tensor:
    """The highest-scoring continuation of each row of ``input_ids`` ``(B, T)``.

    Returns ``(B, T + n)`` with ``n`` the longest best hypothesis; shorter ones are padded with
    the first stop id. A hypothesis ends at a stop id or at ``max_new_tokens``; its score is its
    summed log-probability over ``generated_len ** length_penalty`` (> 0 favours long ones).
    ``early_stopping``: True stops a row once it holds ``num_beams`` finished hypotheses; False
    also stops when the best running beam, at its present length, can no longer beat the worst
    finished one; "never" judges that at the longest length left (the exact rule).

    Examples
    --------
    >>> from workbench.models import ModelConfig, Transformer
    >>> model = Transformer(ModelConfig.preset("tiny-llama"), seed=0).eval()
    >>> beam_search(model, torch.tensor([[1, 2, 3]]), 5, num_beams=3).shape
    torch.Size([1, 8])
    """
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be finite, got {length_penalty}")
    B, T = input_ids.shape
    k, N, V = num_beams, max_new_tokens, model.cfg.vocab_size
    device = model.device
    input_ids = input_ids.to(device)
    if N == 0:
        return input_ids
    stops = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)
    # Candidates kept per row each step: enough that k go on even if the best ones all stop.
    keep = max(2, 1 + len(eos_token_ids)) * k
    fill = int(eos_token_ids[0]) if len(eos_token_ids) else 0

    running = torch.full((B, k, T + N), fill, dtype=torch.long, device=device)  # (B, k, T+N)
    running[:, :, :T] = input_ids[:, None, :]
    running_scores = torch.zeros((B, k), device=device)
    running_scores[:, 1:] = _NEG  # all beams start equal: only beam 0 may extend at first
    finished = running.clone()  # best finished hypotheses, best first
    finished_scores = torch.full((B, k), _NEG, device=device)
    finished_flags = torch.zeros((B, k), dtype=torch.bool, device=device)
    finished_lens = torch.zeros((B, k), dtype=torch.long, device=device)
    improvable = torch.ones((B, 1), dtype=torch.bool, device=device)
    first_k = torch.arange(keep, device=device) < k  # (keep,) only these may finish this step
    row_base = (
        torch.arange(B, device=device)[:, None] * k
    )  # (B, 1) first flat row of each batch row

    # The prompt runs once per row; its cache rows are then copied to the row's k beams.
    cache = KVCache(model.cfg, B, T + N, device, model.dtype) if use_cache else None
    logits = model(input_ids, cache)[:, -1, :].repeat_interleave(k, dim=0)  # (B*k, V)
    if cache is not None:
        cache.reorder(torch.arange(B, device=device).repeat_interleave(k))
    for step in range(N):
        cur = T + step  # where this step's token goes
        log_probs = F.log_softmax(logits.float(), dim=-1).view(B, k, V)
        scores = (log_probs + running_scores[:, :, None]).view(B, k * V)
        top_scores, top_index = torch.topk(scores, keep)  # (B, keep), best first
        parent = top_index // V  # (B, keep) the beam each candidate extends
        token = top_index % V
        cand = _take(running, parent)  # (B, keep, T+N)
        cand[:, :, cur] = token
        ends = torch.isin(token, stops) | (step == N - 1)  # (B, keep) hits a stop or the limit

        # The k best candidates that go on.
        alive = top_scores + ends.float() * _NEG
        pick = torch.topk(alive, k).indices  # (B, k)
        running, running_scores, beam_parent = (
            _take(cand, pick),
            _take(alive, pick),
            _take(parent, pick),
        )

        # The k best finished hypotheses so far, old and new.
        gen_len = step + 1
        just_done = ends & first_k[None, :]
        new_scores = top_scores / (gen_len**length_penalty)
        full = finished_flags.all(dim=-1, keepdim=True) & (early_stopping is True)
        new_scores = new_scores + full.float() * _NEG
        new_scores = new_scores + (~improvable).float() * _NEG
        new_scores = new_scores + (~just_done).float() * _NEG
        best = torch.topk(torch.cat((finished_scores, new_scores), dim=1), k).indices
        finished = _take(torch.cat((finished, cand), dim=1), best)
        finished_scores = _take(torch.cat((finished_scores, new_scores), dim=1), best)
        finished_flags = _take(torch.cat((finished_flags, just_done), dim=1), best)
        lens = torch.full_like(token, gen_len)
        finished_lens = _take(torch.cat((finished_lens, lens), dim=1), best)

        # Can a running beam still beat the worst finished one?
        horizon = N if (early_stopping == "never" and length_penalty > 0) else gen_len
        best_running = running_scores[:, :1] / (horizon**length_penalty)  # (B, 1)
        worst = finished_scores.min(dim=1, keepdim=True).values
        worst_finished = torch.where(finished_flags, worst, _NEG)  # (B, k)
        improvable = improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
        all_full = bool(finished_flags.all()) and early_stopping is True
        if not bool(improvable.any()) or all_full or bool(ends.all()):
            break

        source_rows = (beam_parent + row_base).view(-1)  # (B*k,) flat parent of each new beam
        if cache is not None:
            cache.reorder(source_rows)
            logits = model(running[:, :, cur].reshape(B * k, 1), cache)[:, -1, :]
        else:
            logits = model(running[:, :, : cur + 1].reshape(B * k, cur + 1))[:, -1, :]
    length = int(finished_lens[:, 0].max())
    return finished[:, 0, : T + length]
