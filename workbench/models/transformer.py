"""A decoder-only transformer for every family in ``ModelConfig``.

One implementation, switched by the config:

- gpt2: learned positions, LayerNorm, GELU (tanh) MLP, fused qkv projection, biases;
- the others: rotary positions (half-split convention, as in Hugging Face), RMSNorm, gated MLP
  (SwiGLU; GeGLU for Gemma), grouped-query attention; and by named switches: q/k/v biases
  (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma 3), sliding-window layers (Mistral, Phi-3,
  Gemma), post-norms around attention and MLP, embeddings scaled by sqrt(C), attention and
  final logit soft-capping and a query scale of their own (Gemma), RoPE scaling (Llama 3.x)
  and a separate RoPE base for sliding layers (Gemma 3).

The model knows nothing of files or tokenizers. Its parameter names are its own
(``blocks.3.attn.q.weight``); the formats package maps them to Hugging Face and llama.cpp names
through plain dicts. Decoding (greedy, sampling, beam search) lives in ``generation.py``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.models import rope as rope_math
from workbench.models.config import ModelConfig
from workbench.models.memory import EditMemory


class KVCache:
    """Preallocated keys and values for every layer: ``(B, n_kv, max_len, hd)`` each."""

    def __init__(
        self, cfg: ModelConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0  # tokens already stored
        self.max_len = max_len
        # (B, max_len) bool: the slots each row may attend to, for rows whose cached prefixes
        # differ in length (the slots' order does not matter once keys are rotated); None: all
        self.valid: Tensor | None = None

    @torch.no_grad()
    def reorder(self, rows: Tensor) -> None:
        """Make row ``i`` a copy of old row ``rows[i]`` (``rows`` is ``(B',)``, repeats allowed).

        Beam search follows its beams this way; ``B'`` may differ from the old batch size.
        """
        for bufs in (self.k, self.v):
            for i, buf in enumerate(bufs):
                kept = buf[rows, :, : self.pos]  # (B', nkv, pos, hd), a copy
                if kept.shape[0] != buf.shape[0]:
                    bufs[i] = buf.new_empty((kept.shape[0], *buf.shape[1:]))
                bufs[i][:, :, : self.pos] = kept


# Rotary tables (cos, sin), each (T, hd) (or (B, 1, T, hd): rows at positions of their own): for
# global layers, and for sliding ones (the same pair unless those have a RoPE base of their own).
Rope = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, gain_in_fp32: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.gain_in_fp32 = gain_in_fp32
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in fp32 and cast back before the gain, as Hugging Face's LlamaRMSNorm does,
        # so bf16/fp16 models round the same way; Gemma applies the gain in fp32, then casts.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gain_in_fp32:
            return (xf * self.weight.float()).to(x.dtype)
        return self.weight * xf.to(x.dtype)


def _norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = cfg.n_embd if dim is None else dim
    if cfg.family == "gpt2":
        return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.use_bias)
    return RMSNorm(dim, cfg.norm_eps, gain_in_fp32=cfg.is_gemma)


def _window_mask(past: int, T: int, window: int | None, device: torch.device) -> Tensor:
    """``(T, past+T)`` bool: query ``past + i`` sees key ``j`` when ``j <= past + i`` and, with a
    window, ``past + i - j < window`` (Hugging Face's sliding-window overlay)."""
    q = past + torch.arange(T, device=device)[:, None]
    k = torch.arange(past + T, device=device)[None, :]
    mask = k <= q
    if window is not None:
        mask &= k > q - window
    return mask


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        nh, nkv, hd, c = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.n_embd
        if cfg.family == "gpt2":
            self.qkv = nn.Linear(c, 3 * c, bias=cfg.use_bias)
        else:
            self.q = nn.Linear(c, nh * hd, bias=cfg.has_qkv_bias)
            self.k = nn.Linear(c, nkv * hd, bias=cfg.has_qkv_bias)
            self.v = nn.Linear(c, nkv * hd, bias=cfg.has_qkv_bias)
        if cfg.has_qk_norm:
            self.q_norm = _norm(cfg, hd)
            self.k_norm = _norm(cfg, hd)
        self.out = nn.Linear(nh * hd, c, bias=cfg.use_bias)
        self.dropout = cfg.dropout
        self.window = cfg.sliding_window if cfg.slides(layer) else None
        self.scale = None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar**-0.5

    def forward(self, x: Tensor, rope: Rope | None, cache: KVCache | None, layer: int) -> Tensor:
        cfg = self.cfg
        B, T, C = x.shape
        nh, nkv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        if cfg.family == "gpt2":
            q, k, v = self.qkv(x).split(C, dim=2)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k = q.view(B, T, nh, hd), k.view(B, T, nkv, hd)
        if cfg.has_qk_norm:  # per head, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(1, 2)  # (B, nh, T, hd)
        k = k.transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if rope is not None:
            cos, sin = rope[self.window is not None]  # (T, hd) each, or per row (B, 1, T, hd)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin

        past = 0
        if cache is not None:
            past = cache.pos
            cache.k[layer][:, :, past : past + T] = k
            cache.v[layer][:, :, past : past + T] = v
            k = cache.k[layer][:, :, : past + T]  # (B, nkv, past+T, hd)
            v = cache.v[layer][:, :, : past + T]

        mask: Tensor | None = None
        # A window no shorter than the keys hides none of them: plain causal attention.
        window = self.window if self.window is not None and past + T > self.window else None
        valid = cache.valid if cache is not None else None
        is_causal = past == 0 and T > 1 and window is None and valid is None
        if (past > 0 and T > 1) or window is not None or valid is not None:
            # A chunk after a cached prefix: query i sees keys up to past + i (and the window).
            mask = _window_mask(past, T, window, x.device)  # (T, past+T)
            if valid is not None:  # ... that its row holds
                mask = mask & valid[:, None, None, : past + T]  # (B, 1, T, past+T)
        dropout = self.dropout if self.training else 0.0
        if cfg.attn_softcap is None:
            # Under CPU autocast (the learner's bfloat16 steps) attention runs in float32:
            # bfloat16 attention's backward took ~20x float32's on CPU (SmolLM2-135M).
            cpu_autocast = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            if cpu_autocast:
                q, k, v = q.float(), k.float(), v.float()
            with torch.autocast("cpu", enabled=False) if cpu_autocast else nullcontext():
                y = F.scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    attn_mask=mask,
                    is_causal=is_causal,
                    dropout_p=dropout,
                    scale=self.scale,
                    enable_gqa=nkv != nh,
                )  # (B, nh, T, hd)
        else:
            if is_causal:
                mask = _window_mask(0, T, None, x.device)
            y = self._capped(q, k, v, mask, cfg.attn_softcap, dropout)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)
        return self.out(y)

    def _capped(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, cap: float, dropout: float
    ) -> Tensor:
        """Attention with scores soft-capped to ``cap * tanh(s / cap)`` before the mask (Gemma
        2), which ``scaled_dot_product_attention`` cannot do; softmax in float32 as Hugging Face."""
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, S)
        att = torch.tanh(att / cap) * cap
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        att = att.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        att = F.dropout(att, p=dropout, training=dropout > 0)
        return att @ v  # (B, nh, T, hd)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.family = cfg.family
        self.gelu_gate = cfg.is_gemma  # GeGLU (tanh GELU) instead of SwiGLU
        w = cfg.mlp_width
        if cfg.family == "gpt2":
            self.up = nn.Linear(cfg.n_embd, w, bias=cfg.use_bias)
        else:
            self.gate = nn.Linear(cfg.n_embd, w, bias=False)
            self.up = nn.Linear(cfg.n_embd, w, bias=False)
        self.down = nn.Linear(w, cfg.n_embd, bias=cfg.use_bias and cfg.family == "gpt2")
        # taught facts kept beside this layer (Transformer.edit_memory sets it; not a weight)
        self.memory: EditMemory | None = None

    def keys(self, x: Tensor) -> Tensor:
        """The down projection's input ``(..., mlp_width)``: what locate-and-edit updates key on."""
        if self.family == "gpt2":
            return F.gelu(self.up(x), approximate="tanh")
        if self.gelu_gate:
            return F.gelu(self.gate(x), approximate="tanh") * self.up(x)
        return F.silu(self.gate(x)) * self.up(x)

    def project(self, keys: Tensor) -> Tensor:
        """The MLP's output for its ``keys``: the down projection, plus the edit memory's
        residuals at the tokens whose keys it holds."""
        out = self.down(keys)
        return out if self.memory is None else self.memory.apply(keys, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.keys(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.attn_norm = _norm(cfg)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = _norm(cfg)
        self.mlp = MLP(cfg)
        self.post_norms = cfg.is_gemma  # norms on the attention and MLP outputs too
        if self.post_norms:
            self.attn_post_norm = _norm(cfg)
            self.mlp_post_norm = _norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def attend(self, x: Tensor, rope: Rope | None, cache: KVCache | None, layer: int) -> Tensor:
        """The residual stream after this block's attention, before its MLP."""
        y = self.attn(self.attn_norm(x), rope, cache, layer)
        if self.post_norms:
            y = self.attn_post_norm(y)
        return x + self.drop(y)

    def mlp_out(self, x: Tensor) -> Tensor:
        """What the MLP adds to the residual stream ``x`` (post-norm included)."""
        y = self.mlp(self.mlp_norm(x))
        return self.mlp_post_norm(y) if self.post_norms else y

    def forward(self, x: Tensor, rope: Rope | None, cache: KVCache | None, layer: int) -> Tensor:
        x = self.attend(x, rope, cache, layer)
        return x + self.drop(self.mlp_out(x))


class Transformer(nn.Module):
    """Decoder-only language model.

    ``model(input_ids)`` with ``input_ids`` a LongTensor ``(B, T)`` returns logits ``(B, T, V)``.

    Examples
    --------
    >>> model = Transformer(ModelConfig.preset("tiny-llama"), seed=0)
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> model(ids).shape
    torch.Size([1, 3, 257])
    >>> model.generate(ids, max_new_tokens=4).shape
    torch.Size([1, 7])
    """

    inv_freq: Tensor  # RoPE inverse frequencies (not gpt2), a non-persistent buffer
    inv_freq_local: Tensor  # those of sliding layers with a base of their own (Gemma 3)
    # Whether the weights came from a file (trained) rather than a random draw: the learner
    # teaches a pretrained model by edits, a random one by fine-tuning (update_method="auto").
    pretrained: bool = False

    def __init__(self, cfg: ModelConfig, *, seed: int | None = 0, init: bool = True) -> None:
        """``seed`` draws the initial weights reproducibly (None: torch's global RNG);
        ``init=False`` leaves them uninitialized, for a model about to be loaded (cheap on the
        meta device, where random initialization would import torch's compiler stack)."""
        super().__init__()
        self.cfg = cfg
        # Embeddings get their storage up front: nn.Embedding's own init is redundant here
        # (reset_parameters draws every weight) and on the meta device it imports torch._dynamo,
        # which costs almost a second per process.
        self.tok_emb = nn.Embedding(
            cfg.vocab_size, cfg.n_embd, _weight=torch.empty(cfg.vocab_size, cfg.n_embd)
        )
        if cfg.family == "gpt2":
            self.pos_emb = nn.Embedding(
                cfg.n_ctx, cfg.n_embd, _weight=torch.empty(cfg.n_ctx, cfg.n_embd)
            )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = _norm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.family != "gpt2":
            # Computed on the CPU even when the model is built on the meta device to be loaded:
            # no file carries these buffers.
            self.register_buffer("inv_freq", rope_math.inv_freq(cfg), persistent=False)
            if cfg.rope_local_theta is not None:
                local = rope_math.inv_freq(cfg, local=True)
                self.register_buffer("inv_freq_local", local, persistent=False)
        if init:
            self.reset_parameters(seed)

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def reset_parameters(self, seed: int | None = 0) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual outputs scaled by 1/sqrt(2·n_layer)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                std = resid_std if name.endswith(("attn.out.weight", "mlp.down.weight")) else 0.02
                # Draw on the CPU generator, then copy, so a seed means the same weights anywhere.
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
            elif name.endswith("bias"):
                p.zero_()
            else:  # norm gains
                p.fill_(1.0)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def edit_memory(self) -> EditMemory | None:
        """Taught facts kept beside one MLP layer (``workbench.models.memory``), or None.
        Not a weight: ``state_dict`` and weight files leave it out; the learner saves it in
        its checkpoints and publishes it with the weights."""
        for block in self.blocks:
            mem = cast(Block, block).mlp.memory
            if mem is not None:
                return mem
        return None

    @edit_memory.setter
    def edit_memory(self, memory: EditMemory | None) -> None:
        if memory is not None and not 0 <= memory.layer < len(self.blocks):
            raise ValueError(f"edit memory layer {memory.layer} is not a layer of this model")
        for i, block in enumerate(self.blocks):
            cast(Block, block).mlp.memory = (
                memory if memory is not None and i == memory.layer else None
            )

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_emb.weight.dtype

    # ------------------------------------------------------------------ forward
    def _rope(self, start: int, length: int, dtype: torch.dtype) -> Rope:
        def tables(inv_freq: Tensor) -> tuple[Tensor, Tensor]:
            pos = torch.arange(start, start + length, device=inv_freq.device, dtype=torch.float32)
            freqs = torch.outer(pos, inv_freq)  # (T, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
            return emb.cos().to(dtype), emb.sin().to(dtype)

        full = tables(self.inv_freq)
        local = tables(self.inv_freq_local) if self.cfg.rope_local_theta is not None else full
        return full, local

    def hidden(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final normalized hidden states ``(B, T, n_embd)``."""
        x, rope = self.embed(input_ids, cache)
        x = self.run_blocks(x, rope, 0, len(self.blocks), cache)
        if cache is not None:
            cache.pos += input_ids.shape[1]
        return self.norm(x)

    def embed(self, input_ids: Tensor, cache: KVCache | None = None) -> tuple[Tensor, Rope | None]:
        """Token (and position) embeddings ``(B, T, C)`` and the rotary tables for the blocks."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds the model's context ({self.cfg.n_ctx})"
            )
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.cfg.is_gemma:  # rounded to the weights' dtype first, as Hugging Face does
            x = x * torch.tensor(self.cfg.n_embd**0.5).to(device=x.device, dtype=x.dtype)
        rope = None
        if self.cfg.family == "gpt2":
            x = x + self.pos_emb(torch.arange(start, start + T, device=input_ids.device))
        else:
            rope = self._rope(start, T, x.dtype)
        return self.drop(x), rope

    def run_blocks(
        self,
        x: Tensor,
        rope: Rope | None,
        start: int,
        stop: int,
        cache: KVCache | None = None,
    ) -> Tensor:
        """The residual stream after blocks ``start..stop-1`` (not normalized)."""
        for i in range(start, stop):
            x = self.blocks[i](x, rope, cache, i)
        return x

    def head(self, h: Tensor) -> Tensor:
        """Project hidden states to logits ``(B, T, V)``."""
        logits = F.linear(h, self.tok_emb.weight) if self.cfg.tie_embeddings else self.lm_head(h)
        cap = self.cfg.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        return self.head(self.hidden(input_ids, cache))

    def last_logits(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits ``(B, V)`` of the last position only: the head (V columns) runs once per row."""
        return self.head(self.hidden(input_ids, cache)[:, -1:])[:, -1]

    # ------------------------------------------------------------------ generation
    def generate(self, input_ids: Tensor, max_new_tokens: int, **options: Any) -> Tensor:
        """Continue ``input_ids`` ``(B, T)``; return the full sequences ``(B, T + n)``.

        ``workbench.models.generation.generate`` for this model, with the same keyword options
        (temperature, top_k, top_p, eos_token_id, seed, callback, use_cache, num_beams,
        length_penalty, early_stopping, cache), described there.
        """
        # Imported here: generation builds on this module's KVCache.
        from workbench.models.generation import generate

        return generate(self, input_ids, max_new_tokens, **options)
