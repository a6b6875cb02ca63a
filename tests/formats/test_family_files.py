"""Every family through GGUF: a file written the way llama.cpp's converter writes it (gguf-py's
writer, llama.cpp tensor names from gguf-py's own name map, its metadata keys, no key of ours)
loads to transformers' logits; our own GGUF save round-trips bit-exactly; bad family keys and
tensors give a ``WeightLoadError`` that says what to fix."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.formats.llama_cpp_files import add_model_shape, convert_permute, write_out
from tests.models.families import FAMILIES, assert_matches_hf, hf_model, random_ids
from workbench.formats import WeightLoadError, load_model, load_model_state, save_weights

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

_ARCH = {
    "llama3": "LLAMA",
    "mistral": "LLAMA",
    "qwen2": "QWEN2",
    "qwen3": "QWEN3",
    "phi3": "PHI3",
    "gemma2": "GEMMA2",
    "gemma3": "GEMMA3",
}


def _rope_divisors(config: Any, head_dim: int) -> np.ndarray:
    # What convert_hf_to_gguf.py writes for rope_type "llama3": the plain inverse frequencies
    # over transformers' llama3-scaled ones (so this test's reference is transformers' rule).
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    base = config.rope_parameters["rope_theta"]
    plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    return (plain / scaled.float()).numpy().astype(np.float32)


def write_llama_cpp_gguf(hf: torch.nn.Module, family: str, path: Path) -> None:
    """``hf``'s weights as llama.cpp's converter would write them (F32, no tokenizer)."""
    c = hf.config
    arch = getattr(gguf.MODEL_ARCH, _ARCH[family])
    names = gguf.get_tensor_name_map(arch, c.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    layers, ffn = c.num_hidden_layers, c.intermediate_size
    add_model_shape(w, c.max_position_embeddings, c.hidden_size, layers, ffn, heads, kv_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    rope = c.rope_parameters
    if family == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
        w.add_sliding_window(c.sliding_window)
    elif family == "gemma3":
        full = rope["full_attention"]
        w.add_rope_freq_base(full["rope_theta"])
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
        w.add_sliding_window(c.sliding_window)
    else:
        w.add_rope_freq_base(rope["rope_theta"])
        w.add_rope_dimension_count(head_dim)
        if family in ("phi3", "mistral"):
            # llama.cpp reads it for phi3; for a llama-architecture Mistral it is our reading
            w.add_sliding_window(c.sliding_window or 0)
    tied = c.tie_word_embeddings
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        t = t.detach().float().numpy()
        if family in ("llama3", "mistral") and "q_proj" in name:
            t = convert_permute(t, heads)
        elif family in ("llama3", "mistral") and "k_proj" in name:
            t = convert_permute(t, kv_heads)
        if family.startswith("gemma") and name.endswith("norm.weight"):
            t = t + 1  # llama.cpp stores Gemma's 1 + w
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        w.add_tensor(new, t)
    if family == "llama3":
        w.add_tensor("rope_freqs.weight", _rope_divisors(c, head_dim))
    write_out(w)


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_gguf_matches_transformers(family: str, tmp_path: Path) -> None:
    hf = hf_model(family, seed=11)
    path = tmp_path / "model.gguf"
    write_llama_cpp_gguf(hf, family, path)
    ours, _ = load_model(path, dtype="float32")
    assert_matches_hf(hf, ours, random_ids(seed=4))


@pytest.mark.parametrize("family", FAMILIES)
def test_our_gguf_round_trip_is_exact(family: str, tmp_path: Path) -> None:
    hf = hf_model(family, seed=13)
    hf.save_pretrained(tmp_path / "hf")
    ours, tok = load_model(tmp_path / "hf", dtype="float32")
    first = save_weights(ours, tmp_path / "a.gguf", "gguf", tokenizer=tok)
    state = load_model_state(first)
    assert state.config == ours.cfg
    want = ours.state_dict()
    assert set(state.state_dict) == set(want)
    for k, v in want.items():
        assert torch.equal(state.state_dict[k], v), k
    # Without our exact config the llama.cpp keys alone give the same model.
    from tests.formats.gguf_edit import rewrite_metadata

    rewrite_metadata(first, tmp_path / "plain.gguf", {"workbench.config": None})
    plain, _ = load_model(tmp_path / "plain.gguf", dtype="float32")
    ids = random_ids(seed=6)
    with torch.no_grad():
        assert (plain(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_bad_rope_freqs_is_refused(tmp_path: Path) -> None:
    hf = hf_model("llama3", seed=2)
    path = tmp_path / "model.gguf"
    write_llama_cpp_gguf(hf, "llama3", path)
    from workbench.formats.gguf_reader import open_gguf

    header, _ = open_gguf(path)
    info = next(i for i in header.tensors if i.name == "rope_freqs.weight")
    data = bytearray(path.read_bytes())
    bad = np.asarray([1.0, 3.0, 0.5, 2.0, 8.0, 1.0, 8.0, 8.0], dtype=np.float32)
    assert info.nbytes == bad.nbytes
    data[info.offset : info.offset + bad.nbytes] = bad.tobytes()
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    with pytest.raises(WeightLoadError, match=r"rope_freqs\.weight.*no llama3 scaling.*re-convert"):
        load_model(tmp_path / "bad.gguf")


def test_longrope_is_refused(tmp_path: Path) -> None:
    hf = hf_model("phi3", seed=2)
    path = tmp_path / "model.gguf"
    write_llama_cpp_gguf(hf, "phi3", path)
    from workbench.formats.gguf_reader import open_gguf

    header, buf = open_gguf(path)
    w = gguf.GGUFWriter(str(tmp_path / "long.gguf"), "phi3")
    for key, value in header.metadata.items():
        if key.startswith("phi3."):
            kind = type(value)
            (w.add_uint32 if kind is int else w.add_float32)(key, value)
    for info in header.tensors:
        arr = np.frombuffer(buf, dtype=np.float32, count=math.prod(info.shape), offset=info.offset)
        w.add_tensor(info.name, arr.reshape(info.shape))
    w.add_tensor("rope_factors_long.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(WeightLoadError, match=r"LongRoPE.*4k-context variant"):
        load_model(tmp_path / "long.gguf")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "lacks 'low_freq_factor'"),
        ({"head_dim": 7}, "even head_dim"),
        ({"layer_types": ["full_attention"] * 3}, "layer_types must list"),
        ({"partial_rotary_factor": 0.5, "rope_parameters": None}, "partial_rotary_factor"),
        ({"use_sliding_window": True}, "use_sliding_window is set"),
        ({"model_type": "gemma3"}, "vision tower.*gemma3_text"),
    ],
)
def test_bad_config_json_is_refused(change: dict[str, Any], error: str, tmp_path: Path) -> None:
    import json

    family = "qwen3" if "use_sliding_window" in change else "gemma3"
    if "partial_rotary_factor" in change:
        family = "phi3"
    hf_model(family).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(change)
    if cfg.get("rope_parameters") is None:
        cfg["rope_scaling"] = {"rope_type": "default", "partial_rotary_factor": 0.5}
        cfg.pop("rope_parameters")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightLoadError, match=error):
        load_model(tmp_path)


@pytest.mark.parametrize("family", ["phi3", "gemma3"])
@pytest.mark.parametrize(("dtype", "tol"), [("float16", 0.02), ("bfloat16", 0.1), ("q8_0", 0.25)])
def test_low_precision_gguf(family: str, dtype: str, tol: float, tmp_path: Path) -> None:
    hf = hf_model(family, seed=17)
    hf.save_pretrained(tmp_path / "hf")
    ours, tok = load_model(tmp_path / "hf", dtype="float32")
    path = save_weights(ours, tmp_path / f"m-{dtype}.gguf", "gguf", dtype, tokenizer=tok)
    again, _ = load_model(path, dtype="float32")
    assert again.cfg == ours.cfg
    ids = random_ids(seed=8)
    with torch.no_grad():
        diff = (again(ids) - ours(ids)).abs().max().item()
    assert 0 < diff <= tol
