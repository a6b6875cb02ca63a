"""RoPE scalings: Hugging Face's frequencies, llama.cpp's divisors, and back."""

from __future__ import annotations

import pytest
import torch

from workbench.models import ModelConfig, ModelConfigError
from workbench.models.rope import inv_freq, llama3_divisors, llama3_from_divisors


def _llama3(theta: float, hd: int, factor: float, old: int) -> ModelConfig:
    return ModelConfig(
        family="llama",
        n_embd=hd * 4,
        n_head=4,
        rope_theta=theta,
        rope_scaling="llama3",
        rope_factor=factor,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_ctx=old,
    )


@pytest.mark.parametrize(
    ("theta", "hd", "factor", "old"),
    [(500000.0, 128, 8.0, 8192), (500000.0, 64, 32.0, 8192), (10000.0, 16, 8.0, 64)],
)
def test_llama3_parameters_come_back_from_divisors(
    theta: float, hd: int, factor: float, old: int
) -> None:
    cfg = _llama3(theta, hd, factor, old)  # Llama 3.1 8B, Llama 3.2 1B, our tiny test model
    found = llama3_from_divisors(llama3_divisors(cfg), theta, hd)
    assert found == {
        "rope_factor": factor,
        "rope_low_freq_factor": 1.0,
        "rope_high_freq_factor": 4.0,
        "rope_original_ctx": old,
    }


def test_llama3_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = transformers.LlamaConfig(
        hidden_size=512,
        num_attention_heads=4,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    assert torch.equal(inv_freq(_llama3(500000.0, 128, 8.0, 8192)), want)


def test_divisors_no_scaling_reproduces_are_refused() -> None:
    assert llama3_from_divisors(torch.ones(8), 10000.0, 16) is None  # nothing scaled
    assert llama3_from_divisors(torch.tensor([1.0, 3.0, 0.5, 2.0]), 10000.0, 8) is None
    assert llama3_from_divisors(torch.full((4,), 2.0), 10000.0, 16) is None  # wrong count


def test_config_switches_are_validated() -> None:
    with pytest.raises(ModelConfigError, match="gpt2 has none of qk_norm"):
        ModelConfig(family="gpt2", qk_norm=True)
    with pytest.raises(ModelConfigError, match="rope_low_freq_factor < rope_high_freq_factor"):
        ModelConfig(family="llama", rope_scaling="llama3", rope_low_freq_factor=4.0)
    with pytest.raises(ModelConfigError, match="sliding_window must be positive"):
        ModelConfig(family="llama", sliding_window=0)
    with pytest.raises(ModelConfigError, match="attn_softcap must be positive"):
        ModelConfig(family="gemma2", attn_softcap=-1.0)
    cfg = ModelConfig(family="gemma3", n_embd=64, n_head=4, head_size=40)
    assert cfg.head_dim == 40 and cfg.has_qk_norm and cfg.is_gemma
    slides = [
        ModelConfig(family="gemma2", n_layer=4, sliding_window=8, global_every=2).slides(i)
        for i in range(4)
    ]
    assert slides == [True, False, True, False]
