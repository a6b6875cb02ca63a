"""Tiny random models of every family, built by transformers (no downloads), for parity tests.

Each spec gives a transformers config and the sequence length to test at (longer than any
sliding window, so windows hide keys). Weights are drawn at random, norms around 1 (for
Gemma around 0: it multiplies by ``1 + w``), never zeros.
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.models import ModelConfig

VOCAB = 257  # our byte tokenizer's size, so a folder without tokenizer.json loads
SEQ = 40


def _common(**extra: Any) -> dict[str, Any]:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        attn_implementation="eager",
    )
    base.update(extra)
    return base


def hf_config(family: str) -> Any:
    """The transformers config of the tiny ``family`` model."""
    import transformers as T

    if family == "llama3":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        return T.LlamaConfig(**_common(rope_parameters=rope, tie_word_embeddings=False))
    if family == "qwen2":
        return T.Qwen2Config(**_common(tie_word_embeddings=True, rope_theta=50000.0))
    if family == "qwen3":
        return T.Qwen3Config(**_common(head_dim=24, tie_word_embeddings=True))
    if family == "mistral":
        return T.MistralConfig(**_common(sliding_window=7, head_dim=16))
    if family == "phi3":
        return T.Phi3Config(
            **_common(sliding_window=9, num_key_value_heads=4, tie_word_embeddings=False)
        )
    if family == "gemma2":
        return T.Gemma2Config(
            **_common(
                head_dim=24,
                query_pre_attn_scalar=24,
                sliding_window=6,
                attn_logit_softcapping=3.0,
                final_logit_softcapping=5.0,
                num_hidden_layers=4,
            )
        )
    if family == "gemma3":
        rope = {
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0},
            # 10000: the base llama.cpp fixes for Gemma 3's sliding layers
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        }
        cfg = T.Gemma3TextConfig(
            **_common(
                head_dim=24,
                query_pre_attn_scalar=24,
                sliding_window=6,
                num_hidden_layers=6,  # one global layer every 6, as llama.cpp fixes it
                rope_parameters=rope,
            )
        )
        return cfg
    raise KeyError(family)


FAMILIES = ("llama3", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3")


def hf_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A random, eval-mode, float32 transformers model of ``family``."""
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(hf_config(family), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    gemma = family.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("norm.weight"):
                centre = 0.0 if gemma else 1.0
                p.copy_(centre + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model.eval()


def random_ids(seed: int = 1, batch: int = 2, length: int = SEQ) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_matches_hf(hf: torch.nn.Module, ours: Any, ids: torch.Tensor) -> None:
    """``ours`` computes ``hf``'s logits on ``ids`` (within 1e-4) and its 12 greedy tokens after
    the first 8 of ``ids``."""
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert (got - ref).abs().max().item() <= 1e-4
    prompt = ids[:, :8]
    want = hf.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert torch.equal(ours.generate(prompt, max_new_tokens=12), want)


# ---------------------------------------------------------------------- ours beside transformers
def gpt2_pair(tied: bool = True) -> tuple[ModelConfig, Any]:
    """Our config of a small GPT-2 and a transformers model of the same shape (untrained)."""
    import transformers as T

    cfg = ModelConfig(
        family="gpt2", vocab_size=311, n_ctx=64, n_embd=96, n_layer=3, n_head=4, tie_embeddings=tied
    )
    hf_cfg = T.GPT2Config(
        vocab_size=311,
        n_positions=64,
        n_embd=96,
        n_layer=3,
        n_head=4,
        tie_word_embeddings=tied,
        layer_norm_epsilon=1e-5,
        bos_token_id=0,
        eos_token_id=0,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    return cfg, T.GPT2LMHeadModel(hf_cfg)


def llama_pair(n_ctx: int, kv: int, tied: bool) -> tuple[ModelConfig, Any]:
    """Our config of a small Llama (6 heads, ``kv`` of them for keys and values) and a
    transformers model of the same shape (untrained)."""
    import transformers as T

    cfg = ModelConfig(
        family="llama",
        vocab_size=307,
        n_ctx=n_ctx,
        n_embd=96,
        n_layer=3,
        n_head=6,
        n_kv_head=kv,
        intermediate_size=160,
        rope_theta=50000.0,
        norm_eps=1e-6,
        tie_embeddings=tied,
    )
    hf_cfg = T.LlamaConfig(
        vocab_size=307,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=kv,
        max_position_embeddings=n_ctx,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
        bos_token_id=0,
        eos_token_id=0,
    )
    return cfg, T.LlamaForCausalLM(hf_cfg)
