"""Generation speed on SmolLM2-135M-Instruct: ours beside transformers in one run.

1. greedy decode, ``--new`` tokens after a chat prompt: tokens/s and time to first token of
   ``Transformer.generate`` vs ``transformers``' ``generate`` on the same fp32 weights, with the
   same intra-op threads. Goal: ours ≥ 1.0× transformers' tokens/s on 2 cores.
2. multi-turn chat through ``learner.chat``: time to first token at turn 5 vs turn 1, with the
   conversation's KV cache and without it. Goal: turn 5 ≤ 1.3× turn 1 with the cache.

Both paths are validated before timing: the first 16 greedy tokens must be identical.
Anchor (issue 20): llama.cpp decodes the same Q4_1 file at ~124 tokens/s on 2 threads.

Run: ``python bench/generate.py [--new 64] [--threads 2] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from workbench.formats import load_model
from workbench.formats.hf_names import to_hf
from workbench.formats.shipped import smollm2_gguf
from workbench.learner import LearningConfig, OnlineLearner
from workbench.learner._inference import PromptCache
from workbench.models import Transformer

QUESTION = "Explain in two sentences why the sky is blue, and name the physicist it is named after."


def hf_twin(model: Transformer) -> torch.nn.Module:
    """transformers' Llama with our weights (built locally: no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    cfg = model.cfg
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.mlp_width,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        torch_dtype="float32",
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    state = to_hf(model.state_dict(), cfg)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    return hf


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_speed(model: Transformer, hf: torch.nn.Module, ids: torch.Tensor, args) -> None:
    n = args.new
    with torch.inference_mode():
        ours16 = model.generate(ids, 16)[0, ids.shape[1] :].tolist()
        ref16 = hf.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    assert ours16 == ref16, f"greedy tokens differ: {ours16} vs {ref16}"

    def ours(k: int):
        return lambda: model.generate(ids, k)

    def ref(k: int):
        return lambda: hf.generate(ids, max_new_tokens=k, min_new_tokens=k, do_sample=False)

    with torch.inference_mode():
        ours(2)(), ref(2)()  # warm up
        t_ours, t_ref = timed(ours(n), args.repeats), timed(ref(n), args.repeats)
        f_ours, f_ref = timed(ours(1), args.repeats), timed(ref(1), args.repeats)
    tps_ours, tps_ref = n / t_ours, n / t_ref
    print(f"prompt {ids.shape[1]} tokens, {n} new, {torch.get_num_threads()} threads")
    print(f"{'':24}{'ours':>12}{'transformers':>14}{'ratio':>8}")
    print(
        f"{'tokens/s':24}{tps_ours:12.1f}{tps_ref:14.1f}{tps_ours / tps_ref:8.2f}x  (goal >= 1.0)"
    )
    print(f"{'time to first token ms':24}{f_ours * 1e3:12.1f}{f_ref * 1e3:14.1f}")


def chat_turns(model: Transformer, tok, turns: int, reuse: bool) -> list[float]:
    cfg = LearningConfig(checkpoint_frequency=None, enabled=False)
    ttft = []
    with OnlineLearner(model, tok, cfg) as learner:
        history: list[dict[str, str]] = []
        for i in range(turns):
            history.append({"role": "user", "content": f"Give me fact number {i + 1} about Mars."})
            if not reuse:
                learner._chat_cache = PromptCache()
            start = time.perf_counter()
            learner.chat(history, max_new_tokens=1)
            ttft.append(time.perf_counter() - start)
            reply = learner.chat(history, max_new_tokens=24)
            history.append({"role": "assistant", "content": reply})
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(smollm2_gguf(), progress=False)
    model = model.float().eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}])
    ids = torch.tensor([tok.encode(prompt)])
    decode_speed(model, hf_twin(model), ids, args)

    print("\nchat through the learner (1 inference thread), time to first token by turn, ms")
    with_cache = chat_turns(model, tok, args.turns, reuse=True)
    without = chat_turns(model, tok, args.turns, reuse=False)
    print(f"{'turn':>6}{'with cache':>12}{'no cache':>10}")
    for i, (a, b) in enumerate(zip(with_cache, without, strict=True)):
        print(f"{i + 1:>6}{a * 1e3:12.1f}{b * 1e3:10.1f}")
    growth = with_cache[-1] / with_cache[0]
    print(
        f"turn {args.turns} / turn 1 with the cache: {growth:.2f}x (goal <= 1.3); "
        f"without: {without[-1] / without[0]:.2f}x"
    )


if __name__ == "__main__":
    main()
