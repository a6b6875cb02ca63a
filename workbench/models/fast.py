"""A fast CPU copy of a ``Transformer`` for decoding: int8 weights, one C++ call per token.

What makes the reference slow on a CPU is not arithmetic: a decode step reads every weight
once (memory-bound: SmolLM2-135M's fp32 weights are 540 MB per token) and runs ~40 small torch
ops per layer from Python. This copy

- stores every linear weight (and the embedding, which is also the head when tied) as int8
  with a float32 scale and offset per group of 32 columns (``GROUP``), about 0.31x the fp32
  bytes. Each group keeps the better (by largest error) of a symmetric grid and an asymmetric
  255-level one: weights read from a Q4_1 file lie exactly on the asymmetric grid and Q8_0 ones
  on the symmetric grid, so a shipped model round-trips to float rounding, and after an update
  the error is at most half a step of the better grid;
- keeps RMSNorm gains as float32 vectors applied to the activations. Folding them into the
  weights (as this copy first did) moved the weights off those grids: on SmolLM2-135M greedy
  continuations of a probe set then matched float32 on 69% of positions and the chat answer to
  "What is the capital of France?" lost "Paris";
- decodes one token per row in one call to the kernel ``csrc/decode_cpu.cpp``
  (``decode_step``: every layer, attention on the float32 KV cache, the head; AVX-512, float32
  activations and accumulation; built like the optimizers', see ``_decode_build``), so a token
  costs one Python dispatch instead of ~600;
- runs a prompt (several tokens) layer by layer in torch: with the kernel, through
  ``int8_linear``; without it, through ``int8_linear_reference``, the pure-torch path that is
  also the kernel's reference.

It duck-types the model for ``workbench.models.generation.generate``: ``cfg``, ``device``,
``dtype`` (the cache dtype), ``eval``/``train`` and ``model(ids, cache) -> logits``, so greedy,
sampling, beam search and a chat's ``PromptCache`` run on it unchanged. It knows nothing of
training: ``refresh(model)`` re-quantizes the weights that changed (by a fingerprint of their bytes) into the
same buffers.

The reference is the float32 ``Transformer``; ``tests/models/test_fast.py`` compares logits and
greedy tokens against it on random models and ``tests/models/test_fast_smollm2.py`` on SmolLM2.
``unsupported(cfg)`` names the switches this copy does not implement (GPT-2, Gemma,
soft-capping, sliding windows, q/k norms): such models decode on the reference path.
"""

from __future__ import annotations

import itertools
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.models import _decode_build
from workbench.models.config import ModelConfig
from workbench.models.memory import EditMemory
from workbench.models.transformer import Block, KVCache, Transformer, _window_mask

__all__ = [
    "GROUP",
    "FastTransformer",
    "backend",
    "dequantize",
    "group_size",
    "int8_linear_reference",
    "quantize_rows",
    "unsupported",
]

GROUP = 32  # columns per scale/offset: Q4_1 and Q8_0 blocks are 32 wide
# From this many rows (tokens) on, a matmul dequantizes its weights to bfloat16 and runs a
# bfloat16 matmul (AMX on CPUs that have it); None: prompts run int8_linear in float32.
PREFILL_ROWS: list[int | None] = [16]
# A refresh first compares every this-many-th weight of a matrix: when those moved (a fine-tune
# moves all), it re-quantizes without reading the whole matrix twice.
SAMPLE_STRIDE = 997
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
    if cfg.head_dim > 512 or cfg.head_dim % 2:
        return f"head width {cfg.head_dim} is not implemented"
    return None


def backend() -> str:
    """How copies compute: "one C++ call per token" (the decode kernel), or why they run
    the pure-torch reference."""
    state = _decode_build.kernel_state()
    if state["impl"] == "kernel":
        return "one C++ call per token"
    return f"pure torch: {state['reason']}"


def group_size(k: int) -> int:
    """Columns per group for a weight with ``k`` columns: ``GROUP`` where it divides ``k``."""
    return next((g for g in (GROUP, 16) if k % g == 0), k)


@torch.no_grad()
def quantize_rows(w: Tensor, group: int = GROUP) -> tuple[Tensor, Tensor, Tensor]:
    """Int8 per group of ``group`` columns: ``w ≈ q * scale + offset`` over each group.

    Each group takes the symmetric grid (``offset`` 0, ``scale = max|w| / 127``) or the
    asymmetric one (255 levels from min to max), whichever has the smaller largest error (ties:
    symmetric); the same float ops in the same order as the kernel's ``int8_quantize_``, so
    both give the same bits. ``w`` is not written. Returns ``(q (N, K) int8, scale (N, K /
    group) float32, offset (N, K / group) float32)``.
    """
    n, k = w.shape
    if k % group:
        raise ValueError(f"group {group} does not divide the {k} columns")
    x = w.detach().float().reshape(n, k // group, group)  # (N, ng, G)
    lo, hi = x.amin(dim=2, keepdim=True), x.amax(dim=2, keepdim=True)
    s1 = torch.maximum(-lo, hi).clamp_min(1e-12) / 127.0
    s2 = (hi - lo).clamp_min(1e-12) / 255.0
    m2 = lo + 128.0 * s2
    q1 = (x * (1.0 / s1)).round().clamp(-127, 127)  # times the reciprocal, as the kernel
    q2 = ((x - lo) * (1.0 / s2)).round().sub(128.0).clamp(-128, 127)
    e1 = (q1 * s1 - x).abs().amax(dim=2, keepdim=True)
    e2 = ((q2 * s2 + m2) - x).abs().amax(dim=2, keepdim=True)
    asym = e2 < e1  # (N, ng, 1)
    q = torch.where(asym, q2, q1).to(torch.int8).view(n, k)
    scale = torch.where(asym, s2, s1)[..., 0]
    offset = torch.where(asym, m2, torch.zeros_like(m2))[..., 0]
    return q, scale, offset


def dequantize(q: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """``q * scale + offset`` (each over its group of columns) as float32 ``(N, K)``."""
    n, k = q.shape
    g = q.float().view(n, scale.shape[1], -1)
    return (g * scale[..., None] + offset[..., None]).view(n, k)


def int8_linear_reference(
    x: Tensor, q: Tensor, scale: Tensor, offset: Tensor, bias: Tensor | None = None
) -> Tensor:
    """``x (M, K) @ dequantize(q, scale, offset)^T (+ bias)`` in float32: the pure-torch path
    of the decode kernel."""
    return F.linear(x, dequantize(q, scale, offset), bias)


class _Linear:
    """An int8 weight ``(N, K)`` with a float32 scale and offset per group of its columns,
    quantized from ``parts`` stacked by rows (fused q/k/v, gate/up)."""

    __slots__ = ("bias", "offset", "q", "scale", "seen")

    def __init__(self, parts: list[Tensor], bias: list[Tensor] | None = None) -> None:
        n, k = sum(p.shape[0] for p in parts), parts[0].shape[1]
        group = group_size(k)
        self.q = torch.empty(n, k, dtype=torch.int8)
        self.scale = torch.empty(n, k // group, dtype=torch.float32)
        self.offset = torch.empty(n, k // group, dtype=torch.float32)
        self.bias = torch.empty(0) if bias is None else torch.empty(n, dtype=torch.float32)
        self.seen: list[tuple[int, int]] = []  # (sample, full) fingerprints of the parts
        self.refresh(parts, bias)

    def refresh(self, parts: list[Tensor], bias: list[Tensor] | None = None) -> bool:
        """Re-quantize the ``parts`` that changed since the last time (and copy ``bias``,
        stacked like them); say whether any did.

        A part whose sparse sample moved is re-quantized at once (a fine-tune moves every
        weight); otherwise its full fingerprint decides, as an edit may move few rows.
        """
        if bias is not None:
            torch.cat([b.detach().float() for b in bias], out=self.bias)
        if len(self.seen) != len(parts):
            self.seen = [(0, 0)] * len(parts)
        row, group, done = 0, self.q.shape[1] // self.scale.shape[1], False
        for j, w in enumerate(parts):
            rows = slice(row, row + w.shape[0])
            row += w.shape[0]
            w = w.detach().float().contiguous()
            sample = _fingerprint(w.view(-1)[::SAMPLE_STRIDE].contiguous())
            if sample == self.seen[j][0] and _fingerprint(w) == self.seen[j][1]:
                continue
            full = _quantize_into(w, self.q[rows], self.scale[rows], self.offset[rows], group)
            self.seen[j] = (sample, full)
            done = True
        return done

    def tensors(self) -> list[Tensor]:
        return [self.q, self.scale, self.offset]

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``(M, K)`` float32 → ``(M, N)`` float32."""
        rows = PREFILL_ROWS[0]
        if rows is not None and x.shape[0] >= rows:
            if _KERNEL[0]:
                w = torch.ops.workbench_decode.int8_dequant_bf16(self.q, self.scale, self.offset)
            else:
                w = dequantize(self.q, self.scale, self.offset).bfloat16()
            y = F.linear(x.to(torch.bfloat16), w).float()
            return y + self.bias if self.bias.numel() else y
        if _KERNEL[0]:
            return torch.ops.workbench_decode.int8_linear(
                x.contiguous(), self.q, self.scale, self.offset, self.bias
            )
        bias = self.bias if self.bias.numel() else None
        return int8_linear_reference(x, self.q, self.scale, self.offset, bias)

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.tensors(), self.bias))


def _fingerprint(t: Tensor) -> int:
    """A hash of ``t``'s bytes. Not ``t._version``: the fused optimizers write parameters
    from C++ without bumping it, and a copy refreshed by version missed every update."""
    if _KERNEL[0]:
        return int(torch.ops.workbench_decode.fingerprint(t))
    return next(_NEVER_SEEN)  # the pure-torch path re-quantizes every time


_NEVER_SEEN = itertools.count(-1, -1)
_NO_MEMORY = torch.zeros(0, 0)


def _quantize_into(w: Tensor, q: Tensor, scale: Tensor, offset: Tensor, group: int) -> int:
    """``quantize_rows(w, group)`` written into row slices of bigger buffers; returns
    ``w``'s fingerprint (the kernel computes it in the same pass)."""
    if _KERNEL[0]:
        return int(torch.ops.workbench_decode.int8_quantize_(w, q, scale, offset, group))
    qq, ss, mm = quantize_rows(w, group)
    q.copy_(qq)
    scale.copy_(ss)
    offset.copy_(mm)
    return next(_NEVER_SEEN)


def _gain(norm: nn.Module) -> Tensor:
    weight = norm.weight
    assert isinstance(weight, Tensor)
    return weight.detach().float().contiguous().clone()


def _qkv_bias(block: Block) -> list[Tensor] | None:
    attn = block.attn
    if attn.q.bias is None:
        return None
    return [attn.q.bias, attn.k.bias, attn.v.bias]


class _Layer:
    """A block's norm gains and four matmuls (q/k/v fused, gate/up fused)."""

    __slots__ = ("attn_gain", "down", "gate_up", "mlp_gain", "out", "qkv")

    def __init__(self, block: Block) -> None:
        attn, mlp = block.attn, block.mlp
        qkv = [attn.q.weight, attn.k.weight, attn.v.weight]
        self.attn_gain, self.mlp_gain = _gain(block.attn_norm), _gain(block.mlp_norm)
        self.qkv = _Linear(qkv, _qkv_bias(block))
        self.out = _Linear([attn.out.weight])
        self.gate_up = _Linear([mlp.gate.weight, mlp.up.weight])
        self.down = _Linear([mlp.down.weight])

    def refresh(self, block: Block) -> int:
        """Re-quantize what changed; return how many matrices that was."""
        attn, mlp = block.attn, block.mlp
        self.attn_gain.copy_(_gain(block.attn_norm))
        self.mlp_gain.copy_(_gain(block.mlp_norm))
        qkv = [attn.q.weight, attn.k.weight, attn.v.weight]
        done = int(self.qkv.refresh(qkv, _qkv_bias(block)))
        done += self.out.refresh([attn.out.weight])
        done += self.gate_up.refresh([mlp.gate.weight, mlp.up.weight])
        return done + self.down.refresh([mlp.down.weight])

    def tensors(self) -> list[Tensor]:
        """In the kernel's order (see ``decode_step`` in ``csrc/decode_cpu.cpp``)."""
        qkv = [*self.qkv.tensors(), self.qkv.bias]
        out, gate_up, down = self.out.tensors(), self.gate_up.tensors(), self.down.tensors()
        return [self.attn_gain, *qkv, *out, self.mlp_gain, *gate_up, *down]

    def nbytes(self) -> int:
        lins = (self.qkv, self.out, self.gate_up, self.down)
        return sum(lin.nbytes() for lin in lins) + self.attn_gain.nbytes + self.mlp_gain.nbytes


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
            self._emb = _Linear([model.tok_emb.weight])  # the head too when tied
            self._head = self._emb if cfg.tie_embeddings else _Linear([model.lm_head.weight])
            self._final_gain = _gain(model.norm)
            pos = torch.arange(cfg.n_ctx, dtype=torch.float32)
            freqs = torch.outer(pos, model.inv_freq.float())  # (n_ctx, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n_ctx, hd)
            half = cfg.head_dim // 2
            sin = emb.sin()
            sin[:, :half] *= -1  # rotate_half(x) * sin == roll(x, half) * signed sin
            self._cos, self._sin = emb.cos().contiguous(), sin.contiguous()
        self._eps = cfg.norm_eps
        self._scale = None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar**-0.5
        # every buffer in decode_step's order; refresh writes into them, so the list stays valid
        self._weights = [t for layer in self._layers for t in layer.tensors()]
        self._weights += [self._final_gain, *self._emb.tensors(), *self._head.tensors()]
        self.last_refreshed = 0  # matrices re-quantized by the last refresh
        # taught facts beside one MLP layer, applied as the model applies them (immutable:
        # shared with the model by reference, swapped by refresh)
        self.memory: EditMemory | None = model.edit_memory
        self.eval()

    @torch.no_grad()
    def refresh(self, model: Transformer) -> int:
        """Re-quantize the weights of ``model`` that changed since this copy last read them
        (an edit changes one matrix, a fine-tune all); return how many matrices that was."""
        if model.cfg != self.cfg:
            raise ValueError("refresh needs a model of the same configuration")
        done = sum(
            layer.refresh(cast(Block, block))
            for layer, block in zip(self._layers, model.blocks, strict=True)
        )
        done += self._emb.refresh([model.tok_emb.weight])
        if not self.cfg.tie_embeddings:
            done += self._head.refresh([model.lm_head.weight])
        self._final_gain.copy_(_gain(model.norm))
        self.memory = model.edit_memory
        self.last_refreshed = done
        return done

    # ------------------------------------------------------------------ what generate reads
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # of the residual stream and the KV cache

    def nbytes(self) -> int:
        """Bytes of the weights and tables this copy holds."""
        tables = self._cos.nbytes + self._sin.nbytes + self._final_gain.nbytes
        head = 0 if self._head is self._emb else self._head.nbytes()
        layers = sum(layer.nbytes() for layer in self._layers)
        return layers + self._emb.nbytes() + head + tables

    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs: object) -> Tensor:
        """As ``Transformer.generate``."""
        from workbench.models.generation import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits ``(B, T, V)`` float32 of ``input_ids`` ``(B, T)`` after ``cache``'s prefix."""
        if input_ids.shape[1] == 1:
            return self.last_logits(input_ids, cache)[:, None]
        return self.head(self.hidden(input_ids, cache))

    def last_logits(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits ``(B, V)`` of the last position only (what a decoding step samples from):
        one call to the decode kernel for a single new token on a cache it can write."""
        if _KERNEL[0] and cache is not None and input_ids.shape[1] == 1 and self._fits(cache):
            B = input_ids.shape[0]
            logits = torch.ops.workbench_decode.decode_step(
                input_ids[:, 0].long().contiguous(),
                self._weights,
                cache.k,
                cache.v,
                cache.pos,
                self._cos,
                self._sin,
                self.cfg.n_head,
                self.cfg.kv_heads,
                self._eps,
                self._scale if self._scale is not None else self.cfg.head_dim**-0.5,
                *self._memory_args(),
            )  # (B, V)
            cache.pos += 1
            return logits.view(B, -1)
        return self.head(self.hidden(input_ids, cache)[:, -1:])[:, -1]

    def _memory_args(self) -> tuple[Tensor, Tensor, int, float]:
        """The edit memory as the kernel takes it: unit directions, residuals, layer (-1:
        none), threshold."""
        mem = self.memory
        if mem is None or not len(mem):
            return _NO_MEMORY, _NO_MEMORY, -1, 1.0
        return mem.directions.contiguous(), mem.values.contiguous(), mem.layer, mem.threshold

    def _fits(self, cache: KVCache) -> bool:
        """Whether the kernel can write ``cache`` (float32, contiguous, room for a token)."""
        k = cache.k[0]
        return (
            k.dtype == torch.float32
            and k.device.type == "cpu"
            and cache.pos < cache.max_len
            and all(t.is_contiguous() for t in (*cache.k, *cache.v))
        )

    def head(self, h: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` of final hidden states ``(B, T, C)`` (normalized, gain
        applied)."""
        B, T, C = h.shape
        return self._head(h.reshape(B * T, C)).view(B, T, -1)

    def _norm(self, x: Tensor, gain: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), gain, eps=self._eps)

    def _embed(self, input_ids: Tensor) -> Tensor:
        """Dequantized embedding rows ``(B, T, C)`` of ``input_ids``."""
        e = self._emb
        q = e.q[input_ids].float()  # (B, T, C)
        g = q.view(*q.shape[:2], e.scale.shape[1], -1)  # (B, T, ng, G)
        return (g * e.scale[input_ids][..., None] + e.offset[input_ids][..., None]).flatten(2)

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
        x = self._embed(input_ids).view(M, C)
        cos = self._cos[past : past + T, None, :]  # (T, 1, hd)
        sin = self._sin[past : past + T, None, :]
        mask = _window_mask(past, T, None, x.device) if past > 0 and T > 1 else None
        is_causal = past == 0 and T > 1
        for i, layer in enumerate(self._layers):
            qkv = layer.qkv(self._norm(x, layer.attn_gain)).view(B, T, nh + 2 * nkv, hd)
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
            gu = layer.gate_up(self._norm(x, layer.mlp_gain))  # (M, 2W)
            g, u = gu.chunk(2, dim=-1)
            keys = F.silu(g) * u
            out = layer.down(keys)
            if self.memory is not None and self.memory.layer == i:
                out = self.memory.apply(keys, out)
            x = x + out
        if cache is not None:
            cache.pos += T
        return self._norm(x, self._final_gain).view(B, T, C)
