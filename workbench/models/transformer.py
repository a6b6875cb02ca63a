"""A decoder-only transformer with two families: GPT-2 and Llama.

One implementation, switched by ``ModelConfig.family``:

- gpt2: learned positions, LayerNorm, GELU (tanh) MLP, fused qkv projection, biases;
- llama: rotary positions (half-split convention, as in Hugging Face), RMSNorm, SwiGLU MLP,
  grouped-query attention.

The model knows nothing of files or tokenizers. Its parameter names are its own
(``blocks.3.attn.q.weight``); the formats package maps them to Hugging Face and llama.cpp names
through plain dicts. Decoding (greedy, sampling, beam search) lives in ``generation.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.models.config import ModelConfig

if TYPE_CHECKING:
    from workbench.models.generation import EarlyStopping, TokenCallback


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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in fp32 and cast back before the gain, as Hugging Face's LlamaRMSNorm does,
        # so bf16/fp16 models round the same way.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.family == "llama":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.use_bias)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        nh, nkv, hd, c = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.n_embd
        if cfg.family == "gpt2":
            self.qkv = nn.Linear(c, 3 * c, bias=cfg.use_bias)
        else:
            self.q = nn.Linear(c, nh * hd, bias=cfg.use_bias)
            self.k = nn.Linear(c, nkv * hd, bias=cfg.use_bias)
            self.v = nn.Linear(c, nkv * hd, bias=cfg.use_bias)
        self.out = nn.Linear(nh * hd, c, bias=cfg.use_bias)
        self.dropout = cfg.dropout

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int
    ) -> Tensor:
        cfg = self.cfg
        B, T, C = x.shape
        nh, nkv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        if cfg.family == "gpt2":
            q, k, v = self.qkv(x).split(C, dim=2)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if rope is not None:
            cos, sin = rope  # (T, hd) each
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
        is_causal = past == 0 and T > 1
        if past > 0 and T > 1:
            # A chunk after a cached prefix: query i sees keys up to past + i.
            idx = torch.arange(past + T, device=x.device)
            mask = idx[None, :] <= (past + torch.arange(T, device=x.device))[:, None]
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=nkv != nh,
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)
        return self.out(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.family = cfg.family
        w = cfg.mlp_width
        if cfg.family == "gpt2":
            self.up = nn.Linear(cfg.n_embd, w, bias=cfg.use_bias)
        else:
            self.gate = nn.Linear(cfg.n_embd, w, bias=False)
            self.up = nn.Linear(cfg.n_embd, w, bias=False)
        self.down = nn.Linear(w, cfg.n_embd, bias=cfg.use_bias and cfg.family == "gpt2")

    def keys(self, x: Tensor) -> Tensor:
        """The down projection's input ``(..., mlp_width)``: what locate-and-edit updates key on."""
        if self.family == "gpt2":
            return F.gelu(self.up(x), approximate="tanh")
        return F.silu(self.gate(x)) * self.up(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.keys(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = _norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = _norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def attend(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int
    ) -> Tensor:
        """The residual stream after this block's attention, before its MLP."""
        return x + self.drop(self.attn(self.attn_norm(x), rope, cache, layer))

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int
    ) -> Tensor:
        x = self.attend(x, rope, cache, layer)
        return x + self.drop(self.mlp(self.mlp_norm(x)))


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

    inv_freq: Tensor  # RoPE inverse frequencies (llama), a non-persistent buffer
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
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = _norm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.family == "llama":
            # Computed on the CPU even when the model is built on the meta device to be loaded:
            # no file carries this buffer.
            steps = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device="cpu")
            inv_freq = 1.0 / (cfg.rope_theta ** (steps / cfg.head_dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
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
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_emb.weight.dtype

    # ------------------------------------------------------------------ forward
    def _rope(self, start: int, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        pos = torch.arange(start, start + length, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def hidden(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final normalized hidden states ``(B, T, n_embd)``."""
        x, rope = self.embed(input_ids, cache)
        x = self.run_blocks(x, rope, 0, len(self.blocks), cache)
        if cache is not None:
            cache.pos += input_ids.shape[1]
        return self.norm(x)

    def embed(
        self, input_ids: Tensor, cache: KVCache | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
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
        rope = None
        if self.cfg.family == "gpt2":
            x = x + self.pos_emb(torch.arange(start, start + T, device=input_ids.device))
        else:
            rope = self._rope(start, T, x.dtype)
        return self.drop(x), rope

    def run_blocks(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
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
        if self.cfg.tie_embeddings:
            return F.linear(h, self.tok_emb.weight)
        return self.lm_head(h)

    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        return self.head(self.hidden(input_ids, cache))

    # ------------------------------------------------------------------ generation
    def generate(
        self,
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
        """Continue ``input_ids`` ``(B, T)``; return the full sequence ``(B, T + n)``.

        ``temperature=0`` is greedy decoding. ``eos_token_id`` is one stop id or several (EOS
        and a chat template's end-of-turn tokens, see ``workbench.chat.stop_token_ids``);
        sequences that emit one are padded with the first until all are done, as transformers
        does. ``callback`` receives each step's new tokens ``(B,)`` and may return True to stop
        early. ``use_cache=False`` recomputes the whole prefix each step (the reference the KV
        cache is tested against).

        ``num_beams > 1`` is beam search (greedy only, no callback): the best hypothesis by
        summed log-probability over ``generated_len ** length_penalty``; ``early_stopping`` is
        True, False or "never", with transformers' meaning (see ``generation.beam_search``).
        ``cache`` continues from a cache that already holds a prefix of ``input_ids`` (see
        ``generation.generate``).
        """
        # Imported here: generation builds on this module's KVCache.
        from workbench.models.generation import generate

        return generate(
            self,
            input_ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=eos_token_id,
            seed=seed,
            callback=callback,
            use_cache=use_cache,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            cache=cache,
        )
