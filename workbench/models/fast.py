"""A fast CPU copy of a ``Transformer`` for decoding: int8 weights, few ops per token.

What makes the reference slow on a CPU is not arithmetic: a decode step reads every weight
once (memory-bound: SmolLM2-135M's fp32 weights are 540 MB per token) and runs ~40 small torch
ops per layer from Python. This copy

- stores every linear weight (and the tied embedding/head) as int8 with one float32 scale
  per group of 64 columns, about a quarter of the fp32 bytes, multiplied by the decode kernel
  ``kernels/decode_cpu.cpp`` (AVX-512, float32 activations and accumulation; built like the
  optimizers', see ``_decode_build``) or, without it, by ``int8_linear_reference``. Groups,
  not one scale per row: on SmolLM2-135M per-row int8 agreed with fp32's greedy next token on
  94% of probe positions, groups of 64 on 97%; torch's own ``_weight_int8pack_mm`` is per-row
  and needs bfloat16 activations to be fast;
- folds each RMSNorm gain into the columns of the projection that follows it, fuses q/k/v into
  one matrix and gate/up into another, and applies the rotary embedding as
  ``x * cos + roll(x) * sin`` with a signed sine table, so a layer is ~20 ops;
- runs a prompt's matmuls (``PREFILL_ROWS`` tokens or more) in bfloat16 on weights dequantized
  for the call (``int8_dequant_bf16``): prompts are compute-bound, and a bfloat16 matmul is
  ~10x faster than a float32 one on CPUs with AMX;
- keeps the residual stream, the rotary tables, the KV cache and attention in float32.

It duck-types the model for ``workbench.models.generation.generate``: ``cfg``, ``device``,
``dtype`` (the cache dtype), ``eval``/``train`` and ``model(ids, cache) -> logits``, so greedy,
sampling, beam search and a chat's ``PromptCache`` run on it unchanged. It knows nothing of
training: ``refresh(model)`` re-quantizes the weights of an updated model into the same buffers.

The reference is the float32 ``Transformer``; ``tests/models/test_fast.py`` compares logits and
greedy tokens against it on random models. ``unsupported(cfg)`` names the switches this copy
does not implement (GPT-2, Gemma, soft-capping, sliding windows, q/k norms): such models decode
on the reference path.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.models import _decode_build
from workbench.models.config import ModelConfig
from workbench.models.transformer import Block, KVCache, Transformer, _window_mask

__all__ = [
    "FastTransformer",
    "dequant_bf16_reference",
    "group_size",
    "int8_linear_reference",
    "quantize_rows",
    "unsupported",
]

# From this many rows (tokens) on, a matmul dequantizes its weights to bfloat16 and runs a
# bfloat16 matmul (AMX on CPUs that have it): at 50 rows that was ~3x faster than int8_linear.
PREFILL_ROWS = 16
# Whether the decode kernel is loaded (decided on the first FastTransformer; tests flip it).
_KERNEL = [False]


def unsupported(cfg: ModelConfig) -> str | None:
    """Why ``cfg`` cannot run on the fast copy (None: it can)."""
    if cfg.family == "gpt2":
        return "GPT-2 (learned positions, LayerNorm) is not implemented"
    if cfg.is_gemma:
        return "Gemma (post-norms, GeGLU, embedding scale) is not implemented"
    if cfg.attn_softcap is not None or cfg.final_softcap is not None:
        return "soft-capping is not implemented"
    if any(cfg.slides(i) for i in range(cfg.n_layer)) or cfg.rope_local_theta is not None:
        return "sliding-window layers are not implemented"
    if cfg.has_qk_norm:
        return "q/k norms are not implemented"
    if cfg.use_bias:
        return "biases outside q/k/v are not implemented"
    return None


def group_size(k: int) -> int:
    """Columns per scale for a weight with ``k`` columns: 64 where it divides ``k``."""
    return next((g for g in (64, 32, 16) if k % g == 0), k)


@torch.no_grad()
def quantize_rows(
    w: Tensor, group: int | None = None, out_q: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per group of ``group`` columns (None: the whole row):
    ``w ≈ q * scale`` repeated over each group's columns, with ``|q| <= 127``.

    Works in blocks of rows so the temporaries stay in cache, never writing to ``w``;
    ``out_q`` reuses a buffer. Returns ``(q (N, K) int8, scale (N, K / group) float32)``.
    """
    n, k = w.shape
    g = k if group is None else group
    if k % g:
        raise ValueError(f"group {g} does not divide the {k} columns")
    q = torch.empty(w.shape, dtype=torch.int8) if out_q is None else out_q
    scale = torch.empty(n, k // g, dtype=torch.float32)
    step = max(1, (1 << 16) // max(1, k))
    for i in range(0, n, step):
        block = w[i : i + step].float().view(-1, k // g, g)  # may be ``w`` itself: read only
        s = block.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / 127.0  # (rows, k/g, 1)
        scale[i : i + step] = s[..., 0]
        q[i : i + step] = (block / s).round_().clamp_(-127, 127).view(-1, k)
    return q, scale


def dequant_bf16_reference(q: Tensor, scale: Tensor) -> Tensor:
    """``q * scale`` (each scale over its group of columns) rounded once to bfloat16."""
    n, k = q.shape
    return (q.float().view(n, scale.shape[1], -1) * scale[..., None]).view(n, k).bfloat16()


def int8_linear_reference(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    """``x (M, K) @ (q * scale)^T`` in float32: the pure-torch path of the decode kernel."""
    n, k = q.shape
    w = (q.float().view(n, scale.shape[1], -1) * scale[..., None]).view(n, k)
    return F.linear(x, w)


def quantize_into(w: Tensor, gain: Tensor | None, q: Tensor, scale: Tensor, group: int) -> None:
    """``quantize_rows(w * gain, group)`` written into ``q`` and ``scale`` (row slices of bigger
    buffers are fine): the kernel's one pass, or the pure-torch path."""
    w = w.detach()
    if _KERNEL[0]:
        g = torch.empty(0) if gain is None else gain
        torch.ops.workbench_decode.int8_quantize_(w.float().contiguous(), g, q, scale, group)
        return
    qq, ss = quantize_rows(w if gain is None else w.float() * gain, group)
    q.copy_(qq)
    scale.copy_(ss)


class _Linear:
    """An int8 weight ``(N, K)`` with one float32 scale per group of its columns, quantized
    from ``parts`` stacked by rows (fused q/k/v, gate/up) times ``gain`` over the columns."""

    __slots__ = ("bias", "group", "q", "scale")

    def __init__(
        self, parts: list[Tensor], gain: Tensor | None = None, bias: Tensor | None = None
    ) -> None:
        n, k = sum(p.shape[0] for p in parts), parts[0].shape[1]
        self.group = group_size(k)
        self.q = torch.empty(n, k, dtype=torch.int8)
        self.scale = torch.empty(n, k // self.group, dtype=torch.float32)
        self.bias = None if bias is None else bias.detach().float().clone()
        self.refresh(parts, gain, bias)

    def refresh(
        self, parts: list[Tensor], gain: Tensor | None = None, bias: Tensor | None = None
    ) -> None:
        row = 0
        for w in parts:
            rows = slice(row, row + w.shape[0])
            quantize_into(w, gain, self.q[rows], self.scale[rows], self.group)
            row += w.shape[0]
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias)

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``(M, K)`` float32 → ``(M, N)`` float32."""
        if x.shape[0] >= PREFILL_ROWS:  # a prompt: compute-bound, bfloat16 weights for a moment
            if _KERNEL[0]:
                w = torch.ops.workbench_decode.int8_dequant_bf16(self.q, self.scale, self.group)
            else:
                w = dequant_bf16_reference(self.q, self.scale)
            y = F.linear(x.to(torch.bfloat16), w).float()
        elif _KERNEL[0]:
            y = torch.ops.workbench_decode.int8_linear(
                x.contiguous(), self.q, self.scale, self.group
            )
        else:
            y = int8_linear_reference(x, self.q, self.scale)
        return y if self.bias is None else y + self.bias

    def nbytes(self) -> int:
        extra = 0 if self.bias is None else self.bias.nbytes
        return self.q.nbytes + self.scale.nbytes + extra


def _gain(norm: nn.Module) -> Tensor:
    weight = norm.weight
    assert isinstance(weight, Tensor)
    return weight.detach().float().contiguous()


def _head(model: Transformer) -> list[Tensor]:
    """The output projection (its columns take the final norm's gain)."""
    head = model.tok_emb.weight if model.cfg.tie_embeddings else model.lm_head.weight
    assert isinstance(head, Tensor)
    return [head]


def _qkv_bias(block: Block) -> Tensor | None:
    attn = block.attn
    if attn.q.bias is None:
        return None
    return torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]).detach()


class _Layer:
    """A block's four matmuls; the norm gains fold into the columns of qkv and gate/up."""

    __slots__ = ("down", "gate_up", "out", "qkv")

    def __init__(self, block: Block) -> None:
        attn, mlp = block.attn, block.mlp
        qkv = [attn.q.weight, attn.k.weight, attn.v.weight]
        self.qkv = _Linear(qkv, _gain(block.attn_norm), _qkv_bias(block))
        self.out = _Linear([attn.out.weight])
        self.gate_up = _Linear([mlp.gate.weight, mlp.up.weight], _gain(block.mlp_norm))
        self.down = _Linear([mlp.down.weight])

    def refresh(self, block: Block) -> None:
        attn, mlp = block.attn, block.mlp
        qkv = [attn.q.weight, attn.k.weight, attn.v.weight]
        self.qkv.refresh(qkv, _gain(block.attn_norm), _qkv_bias(block))
        self.out.refresh([attn.out.weight])
        self.gate_up.refresh([mlp.gate.weight, mlp.up.weight], _gain(block.mlp_norm))
        self.down.refresh([mlp.down.weight])

    def nbytes(self) -> int:
        return sum(lin.nbytes() for lin in (self.qkv, self.out, self.gate_up, self.down))


class FastTransformer(nn.Module):
    """An int8, inference-only copy of a Llama-style ``Transformer`` (see the module notes).

    Examples
    --------
    >>> from workbench.models import ModelConfig
    >>> model = Transformer(ModelConfig.preset("tiny-llama"), seed=0).eval()
    >>> fast = FastTransformer(model)
    >>> fast.generate(torch.tensor([[1, 2, 3]]), 4).shape
    torch.Size([1, 7])
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        why = unsupported(model.cfg)
        if why is not None:
            raise ValueError(f"the fast copy cannot run this model: {why}")
        if model.device.type != "cpu":
            raise ValueError(f"the fast copy runs on the CPU; the model is on {model.device}")
        cfg = self.cfg = model.cfg
        _KERNEL[0] = _decode_build.ensure_loaded()
        with torch.no_grad():
            self._layers = [_Layer(cast(Block, b)) for b in model.blocks]
            V, C = cfg.vocab_size, cfg.n_embd
            self._emb_q = torch.empty(V, C, dtype=torch.int8)  # one scale per row (lookups)
            self._emb_scale = torch.empty(V, 1)
            quantize_into(model.tok_emb.weight, None, self._emb_q, self._emb_scale, C)
            self._emb_s = self._emb_scale[:, 0]  # (V,)
            self._head = _Linear(_head(model), _gain(model.norm))
            pos = torch.arange(cfg.n_ctx, dtype=torch.float32)
            freqs = torch.outer(pos, model.inv_freq.float())  # (n_ctx, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n_ctx, hd)
            half = cfg.head_dim // 2
            sin = emb.sin()
            sin[:, :half] *= -1  # rotate_half(x) * sin == roll(x, half) * signed sin
            self._cos, self._sin = emb.cos(), sin
        self._eps = cfg.norm_eps
        self._scale = None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar**-0.5
        self.eval()

    @torch.no_grad()
    def refresh(self, model: Transformer) -> None:
        """Re-quantize ``model``'s (updated) weights into this copy's buffers."""
        if model.cfg != self.cfg:
            raise ValueError("refresh needs a model of the same configuration")
        for layer, block in zip(self._layers, model.blocks, strict=True):
            layer.refresh(cast(Block, block))
        C = self.cfg.n_embd
        quantize_into(model.tok_emb.weight, None, self._emb_q, self._emb_scale, C)
        self._head.refresh(_head(model), _gain(model.norm))

    # ------------------------------------------------------------------ what generate reads
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # of the residual stream and the KV cache

    def nbytes(self) -> int:
        """Bytes of the weights and tables this copy holds."""
        tables = self._cos.nbytes + self._sin.nbytes + self._emb_q.nbytes + self._emb_s.nbytes
        return sum(layer.nbytes() for layer in self._layers) + self._head.nbytes() + tables

    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs: object) -> Tensor:
        """As ``Transformer.generate``."""
        from workbench.models.generation import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ forward
    def _norm(self, x: Tensor) -> Tensor:
        """RMS-normalized ``x`` (gain folded into the next weight) as the matmul input."""
        return F.rms_norm(x, (x.shape[-1],), eps=self._eps)

    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits ``(B, T, V)`` float32 of ``input_ids`` ``(B, T)`` after ``cache``'s prefix."""
        return self.head(self.hidden(input_ids, cache))

    def head(self, h: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` of final hidden states ``(B, T, C)`` (normalized: the final
        norm's gain is folded into the head)."""
        B, T, C = h.shape
        return self._head(h.reshape(B * T, C)).view(B, T, -1)

    def hidden(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final normalized hidden states ``(B, T, n_embd)``, as ``Transformer.hidden``."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        cfg = self.cfg
        B, T = input_ids.shape
        past = cache.pos if cache is not None else 0
        if past + T > cfg.n_ctx:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the model's context ({cfg.n_ctx})"
            )
        nh, nkv, hd, C = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.n_embd
        M, half = B * T, hd // 2
        x = F.embedding(input_ids, self._emb_q).float() * self._emb_s[input_ids, None]  # (B,T,C)
        x = x.view(M, C)
        cos = self._cos[past : past + T, None, :]  # (T, 1, hd)
        sin = self._sin[past : past + T, None, :]
        mask = _window_mask(past, T, None, x.device) if past > 0 and T > 1 else None
        is_causal = past == 0 and T > 1
        for i, layer in enumerate(self._layers):
            qkv = layer.qkv(self._norm(x)).view(B, T, nh + 2 * nkv, hd)
            qk = qkv[:, :, : nh + nkv]  # (B, T, nh+nkv, hd)
            qk = qk * cos + qk.roll(half, dims=-1) * sin
            q = qk[:, :, :nh].transpose(1, 2)  # (B, nh, T, hd)
            k = qk[:, :, nh:].transpose(1, 2)  # (B, nkv, T, hd)
            v = qkv[:, :, nh + nkv :].transpose(1, 2)  # (B, nkv, T, hd)
            if cache is not None:
                cache.k[i][:, :, past : past + T] = k
                cache.v[i][:, :, past : past + T] = v
                k = cache.k[i][:, :, : past + T]  # (B, nkv, past+T, hd)
                v = cache.v[i][:, :, : past + T]
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=is_causal,
                scale=self._scale,
                enable_gqa=nkv != nh,
            )  # (B, nh, T, hd)
            y = y.transpose(1, 2).reshape(M, nh * hd)
            x = x + layer.out(y)
            gu = layer.gate_up(self._norm(x))  # (M, 2W)
            g, u = gu.chunk(2, dim=-1)
            x = x + layer.down(F.silu(g) * u)
        if cache is not None:
            cache.pos += T
        return self._norm(x).view(B, T, C)
