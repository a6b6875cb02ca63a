"""SafeTensors with Hugging Face layouts: our logits match transformers' on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench.formats import WeightLoadError, load_model, load_weights, save_weights
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import BPETokenizer

transformers = pytest.importorskip("transformers")


def _randomize(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def _gpt2(tied: bool = True) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=257,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        tie_word_embeddings=tied,
        bos_token_id=256,
        eos_token_id=256,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(tied: bool = False) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=257,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        bos_token_id=256,
        eos_token_id=256,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _check_logits(hf: torch.nn.Module, path: Path) -> None:
    model, _ = load_model(path)
    ids = torch.randint(0, 257, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("family", "tied"), [("gpt2", True), ("gpt2", False), ("llama", False), ("llama", True)]
)
def test_hf_folder_matches_transformers(family: str, tied: bool, tmp_path: Path) -> None:
    hf = _gpt2(tied) if family == "gpt2" else _llama(tied)
    _randomize(hf)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    _check_logits(hf, tmp_path)
    _check_logits(hf, tmp_path / "model.safetensors")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hf_sharded(family: str, tmp_path: Path) -> None:
    hf = _gpt2() if family == "gpt2" else _llama()
    _randomize(hf)
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    _check_logits(hf, tmp_path)
    _check_logits(hf, tmp_path / "model.safetensors.index.json")


def test_gpt2_transformer_prefix_and_buffers(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    hf = _gpt2()
    _randomize(hf)
    hf.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 4, 4)
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(tmp_path / "model.safetensors"))
    _check_logits(hf, tmp_path)


def test_hf_unknown_key_is_listed(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    hf = _llama()
    hf.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    state["model.layers.0.mystery.weight"] = torch.ones(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightLoadError, match=r"unexpected keys .*mystery"):
        load_model(tmp_path)


def test_refuses_math_we_do_not_do(tmp_path: Path) -> None:
    hf = _llama()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightLoadError, match="rope_type 'yarn' is not supported"):
        load_model(tmp_path)
    cfg.pop("rope_scaling")
    cfg["model_type"] = "falcon"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightLoadError, match="model_type 'falcon' is not supported"):
        load_model(tmp_path)


def test_no_config_is_explained(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "x.safetensors"))
    assert set(load_weights(tmp_path / "x.safetensors").tensors) == {"w"}
    with pytest.raises(WeightLoadError, match="neither workbench metadata nor"):
        load_model(tmp_path / "x.safetensors")


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_save_hf_layout_loads_in_transformers(preset: str, tmp_path: Path) -> None:
    from workbench.tokenizers import bpe_from_vocab

    model = Transformer(ModelConfig.preset(preset), seed=4)
    tok = bpe_from_vocab(
        [chr(0x100 + i) for i in range(256)] + ["<|endoftext|>"],
        [],
        [1] * 256 + [3],
        bos_id=256,
        eos_id=256,
    )
    save_weights(model, tmp_path / "model.safetensors", "safetensors", hf_names=True, tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() <= 1e-4
    # And our loader prefers its own metadata but reads the HF names back.
    loaded, loaded_tok = load_model(tmp_path / "model.safetensors")
    assert torch.equal(loaded(ids), model(ids))
    assert isinstance(loaded_tok, BPETokenizer)


def test_memory_mapped(tmp_path: Path) -> None:
    model = Transformer(ModelConfig.preset("tiny-gpt2"))
    path = save_weights(model, tmp_path / "w.safetensors", "safetensors")
    loaded, _ = load_model(path)
    # No copy between the file mapping and the model: the parameter is the loaded tensor.
    w = load_weights(path).tensors["tok_emb.weight"]
    assert torch.equal(loaded.tok_emb.weight, w)
