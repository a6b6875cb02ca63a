"""Bench: clip + FusedAdamW / FusedSGD against clip_grad_norm_ + torch.optim, and the floor.

Prints medians of per-step wall time, ours and torch's alternating in one run, their ratio, and
our fraction of the memory-bandwidth floor.

Byte accounting per fp32 parameter for clip + AdamW: the global norm must be known before any
update, so one pass reads every grad (4 B); the update then reads param, grad, exp_avg and
exp_avg_sq (16 B) and writes param, exp_avg, exp_avg_sq (12 B): 32 B. (torch's
clip_grad_norm_ + fused step moves 40 B: it also reads and writes the grads to scale them.)
SGD with momentum: 4 + 12 (read p, g, buf) + 8 (write p, buf) = 24 B.

The floor is measured in-process: ``torch.ops.workbench_optim.stream_probe`` runs AdamW's
exact 4-read/3-write pattern (same chunking, threads, prefetch, vector loads; trivial
arithmetic) over the same tensors, giving a bandwidth B = 28 B * N / t_probe, and the issue's
floor = bytes * N / B. That floor charges the read-only norm pass at the mixed bandwidth, which
is not what the hardware gives everywhere: on the 2-core Xeon VM a read-only stream moves
~26 GB/s against ~48 GB/s for the 4R3W pattern. So on the CPU a second probe,
``read_probe`` (one read stream, the norm pass's pattern), measures B_read, and the two-pass
floor = 4 B * N / B_read + (bytes - 4) * N / B is printed beside it: the least time any step
that must know the global norm before its first update can take on this machine.

Before anything is timed, each case runs two steps of ours and two of clip_grad_norm_ +
torch.optim (``foreach=False``, torch's reference loop) on copies of the same inputs and
requires them to agree (as llm.c's ``validate_result`` does before it benchmarks); a mismatch
stops the bench with the tensor and the difference.

Usage: ``python bench/optim.py [--device cuda] [--quick] [--threads N]``. On a shared machine
pass ``--threads`` no larger than the idle cores: a team that outnumbers them waits at every
barrier for a parked member, which hits torch's many small parallel regions far harder than our
one (5x on 2 cores at load 7), and the ratio then measures the load, not the kernels.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from workbench.optim import FusedAdamW, FusedSGD, backend_info


def gpt2_like(d: int, layers: int, vocab: int, ctx: int) -> list[tuple[int, ...]]:
    """Shapes of a GPT-2 parameter list: 12 tensors per block + wte, wpe, ln_f (148 at 12)."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return [*shapes, (d,), (d,)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make(shapes: list[tuple[int, ...]], device: str) -> list[torch.Tensor]:
    params = [torch.randn(s, device=device).mul_(0.02).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p).mul_(1e-3)
    return params


def copies(params: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Independent copies of ``params`` and their grads, optionally cast to ``dtype``."""
    out = [p.detach().to(dtype=dtype, copy=True).requires_grad_() for p in params]
    for p, q in zip(params, out, strict=True):
        q.grad = None if p.grad is None else p.grad.to(dtype=dtype, copy=True)
    return out


def validate(params: list[torch.Tensor], max_norm: float) -> None:
    """Two steps of ours against clip_grad_norm_ + torch.optim on copies of the same inputs.

    torch's side runs its reference loop (``foreach=False``) in float64: its float32
    ``clip_grad_norm_`` accumulates in float32 and is itself off by ~2e-4 relative on a few
    million elements, while ours sums in float64. Params and optimizer state must then agree to
    float32 rounding; otherwise this raises ``AssertionError`` naming the optimizer and tensor.
    """
    # Steps large enough against the params that a wrong term shows beyond float32 rounding.
    adamw = {"lr": 1e-2, "weight_decay": 0.1}
    sgd = {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.1}
    Make = Callable[..., torch.optim.Optimizer]
    cases: list[tuple[str, Make, Make, dict[str, float]]] = [
        ("AdamW", FusedAdamW, torch.optim.AdamW, adamw),
        ("SGD", FusedSGD, torch.optim.SGD, sgd),
    ]
    for name, ours_cls, ref_cls, kw in cases:
        ours, theirs = copies(params), copies(params, torch.float64)
        grads = [None if q.grad is None else q.grad.clone() for q in theirs]
        opt = ours_cls(ours, max_grad_norm=max_norm, **kw)
        ref = ref_cls(theirs, foreach=False, **kw)
        for _ in range(2):  # the second step takes FusedAdamW's one-call path (state exists)
            opt.step()
            for q, g in zip(theirs, grads, strict=True):
                q.grad = None if g is None else g.clone()
            torch.nn.utils.clip_grad_norm_(theirs, max_norm)
            ref.step()
        worst = 0.0
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            pairs = [("param", a, b)] + [(k, opt.state[a][k], v) for k, v in ref.state[b].items()]
            for what, x, y in pairs:
                if what == "step":
                    continue
                x, y = x.detach(), y.detach().to(x.dtype)
                try:
                    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)
                except AssertionError as err:
                    where = f"ours {name} vs torch, {what} of tensor {i} {tuple(x.shape)}"
                    raise AssertionError(f"validation failed: {where}: {err}") from None
                if x.numel():
                    worst = max(worst, float((x - y).abs().max()))
        print(f"  validated two steps: ours {name} == torch clip+{name}, max |diff| {worst:.1e}")


def timed(
    fns: dict[str, Callable[[], object]], repeats: dict[str, int], device: str, inner: int = 1
) -> dict[str, float]:
    """Median seconds per call; the callables take turns so drift hits all of them alike.

    Each sample times ``inner`` back-to-back calls between two syncs: on a GPU, ``inner > 1``
    measures the device's steady-state throughput (as inside a training loop, where the host
    queues the next step while the GPU runs this one) rather than host launch latency.
    """
    for fn in fns.values():  # warm-up: state allocation, JIT build, caches
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r >= repeats[name]:
                continue
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_case(
    label: str, shapes: list[tuple[int, ...]], device: str, repeats: int, inner: int = 1
) -> None:
    params = make(shapes, device)
    n = sum(p.numel() for p in params)
    max_norm = 1.0
    print(f"\n{label}:")
    validate(params, max_norm)

    def clip() -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    ours_adam = FusedAdamW(params, lr=1e-4, max_grad_norm=max_norm)
    torch_fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ours_sgd = FusedSGD(params, lr=1e-4, momentum=0.9, max_grad_norm=max_norm)
    torch_sgd = torch.optim.SGD(params, lr=1e-4, momentum=0.9, fused=True)
    fns: dict[str, Callable[[], object]] = {
        "ours AdamW": lambda: ours_adam.step(),
        "torch clip+AdamW(fused)": lambda: (clip(), torch_fused.step()),
        "ours SGD": lambda: ours_sgd.step(),
        "torch clip+SGD(fused)": lambda: (clip(), torch_sgd.step()),
    }
    reps = dict.fromkeys(fns, repeats)
    if device == "cpu":
        torch_default = torch.optim.AdamW(params, lr=1e-4)  # default: for-loop on CPU
        fns["torch clip+AdamW()"] = lambda: (clip(), torch_default.step())
        reps["torch clip+AdamW()"] = max(3, repeats // 10)
    a = [torch.zeros_like(p) for p in params]
    b = [torch.zeros_like(p) for p in params]
    grads = [p.grad for p in params]
    fns["probe 4R3W"] = lambda: torch.ops.workbench_optim.stream_probe(params, grads, a, b)
    reps["probe 4R3W"] = repeats
    if device == "cpu":
        fns["probe 1R"] = lambda: torch.ops.workbench_optim.read_probe(grads)
        reps["probe 1R"] = repeats
    t = timed(fns, reps, device, inner)

    bandwidth = 28 * n / t["probe 4R3W"]
    read_bw = 4 * n / t["probe 1R"] if "probe 1R" in t else bandwidth
    floor_adam, floor_sgd = 32 * n / bandwidth, 24 * n / bandwidth
    two_pass_adam = 4 * n / read_bw + 28 * n / bandwidth
    two_pass_sgd = 4 * n / read_bw + 20 * n / bandwidth
    print(
        f"{label}: {len(shapes)} tensors, {n / 1e6:.1f}M params, device={device}, "
        f"threads={torch.get_num_threads()}; {inner} step(s) per sync; "
        f"probe bandwidth {bandwidth / 1e9:.1f} GB/s (4R3W), {read_bw / 1e9:.1f} GB/s (1R)"
    )
    print(f"{'step':<26}{'median ms':>10}{'GB/s':>8}{'vs ours':>9}{'floor/t':>9}")
    rows = [
        ("ours AdamW", 32, floor_adam, "ours AdamW"),
        ("torch clip+AdamW(fused)", 40, floor_adam, "ours AdamW"),
        ("torch clip+AdamW()", 40, floor_adam, "ours AdamW"),
        ("ours SGD", 24, floor_sgd, "ours SGD"),
        ("torch clip+SGD(fused)", 32, floor_sgd, "ours SGD"),
    ]
    for name, nbytes, floor, ref in rows:
        if name not in t:
            continue
        print(
            f"{name:<26}{t[name] * 1e3:>10.2f}{nbytes * n / t[name] / 1e9:>8.1f}"
            f"{t[name] / t[ref]:>8.2f}x{floor / t[name]:>9.2f}"
        )
    print(
        f"=> clip+AdamW: ours {t['torch clip+AdamW(fused)'] / t['ours AdamW']:.2f}x faster than "
        f"torch fused, {floor_adam / t['ours AdamW']:.2f} of the 32 B/param floor, "
        f"{two_pass_adam / t['ours AdamW']:.2f} of the two-pass floor"
        + (
            f", {t['torch clip+AdamW()'] / t['ours AdamW']:.1f}x faster than torch default AdamW()"
            if "torch clip+AdamW()" in t
            else ""
        )
    )
    print(
        f"=> clip+SGD(momentum): ours {t['torch clip+SGD(fused)'] / t['ours SGD']:.2f}x faster "
        f"than torch fused, {floor_sgd / t['ours SGD']:.2f} of the 24 B/param floor, "
        f"{two_pass_sgd / t['ours SGD']:.2f} of the two-pass floor"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="smaller tensors, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--inner",
        type=int,
        default=None,
        help="steps per sync (default: 1 on CPU, 10 on CUDA: device throughput, not launch latency)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = backend_info(build=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}; device: {name}; backend: {info}")
    if info["cpu" if args.device == "cpu" else "cuda"] != "fused":
        raise SystemExit(f"fused kernels not active on {args.device}: {info['reason']}")
    repeats = args.repeats or (5 if args.quick else (30 if args.device == "cpu" else 50))
    inner = args.inner or (1 if args.device == "cpu" else 10)
    dev = args.device
    if args.quick:
        bench_case("GPT-2-like list (small)", gpt2_like(128, 12, 4096, 256), dev, repeats, inner)
        bench_case("flat tensor", [(8_000_000,)], dev, repeats, inner)
    else:
        bench_case("GPT-2-small-like list", gpt2_like(384, 12, 8192, 1024), dev, repeats, inner)
        bench_case("flat 100M tensor", [(100_000_000,)], dev, max(5, repeats // 3), inner)


if __name__ == "__main__":
    main()
