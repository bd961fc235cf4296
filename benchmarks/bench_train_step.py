"""One policy-gradient training step on a small Llama, fused loss vs the eager reference loss.

A step = forward (logits B x T x V), `entropy_pg_loss` (clip-higher, dual clip, k3 KL, entropy bonus,
token-mean), backward, AdamW update. Each loss backend runs in its own subprocess so its peak memory
(CUDA: max_memory_allocated; CPU: peak RSS growth over the process after setup) is its own.

    python benchmarks/bench_train_step.py            # full size
    python benchmarks/bench_train_step.py --quick    # CI size
Writes benchmarks/results/train_step.json and .md; prints the fused/eager ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

SIZES = {
    "full": {"vocab": 32000, "hidden": 256, "layers": 2, "batch": 8, "seq": 256, "steps": 5},
    "quick": {"vocab": 16000, "hidden": 128, "layers": 2, "batch": 4, "seq": 128, "steps": 3},
}


def rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(backend: str, size: dict) -> dict:
    """Time `size["steps"]` training steps with `backend` (after one warm-up step); returns the numbers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from exprl.kernels import entropy_pg_loss

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = LlamaConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=4 * size["hidden"],
        num_hidden_layers=size["layers"],
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=size["seq"],
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, t = size["batch"], size["seq"]
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, size["vocab"], (b, t), generator=g).to(device)
    targets = torch.roll(input_ids, -1, 1)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    mask[:, : t // 4] = False  # the prompt part
    targets[~mask] = -100
    advantages = torch.randn(b, generator=g).to(device)
    old = (-torch.rand(b, t, generator=g) * 5).to(device)
    ref = old + 0.01 * torch.randn(b, t, generator=g).to(device)

    def step() -> float:
        logits = model(input_ids=input_ids).logits
        out = entropy_pg_loss(
            logits,
            targets,
            advantages,
            mask=mask,
            old_logprobs=old,
            ref_logprobs=ref,
            clip_low=0.2,
            clip_high=0.28,
            dual_clip=3.0,
            kl_coef=1e-3,
            entropy_coef=1e-3,
            backend=backend,
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    step()  # warm-up: allocator, optimizer state, lazy inits
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss()
    times, losses = [], []
    for _ in range(size["steps"]):
        start = time.perf_counter()
        losses.append(step())
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else rss_bytes()) - base
    return {
        "backend": backend,
        "device": device,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_step_bytes": peak,
        "losses": losses,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI size")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    if args.worker:
        print(json.dumps(worker(args.worker, size)))
        return 0
    results = {}
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    for backend in ("auto", "eager"):  # auto = the fused path (triton on CUDA, chunked torch on CPU)
        cmd = [sys.executable, __file__, "--worker", backend] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return 1
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    fused, eager = results["auto"], results["eager"]
    summary = {
        "size": size,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "threads": env["OMP_NUM_THREADS"],
        "results": results,
        "time_ratio_fused_over_eager": fused["median_s"] / eager["median_s"],
        "memory_ratio_fused_over_eager": fused["peak_step_bytes"] / max(eager["peak_step_bytes"], 1),
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "train_step_quick" if args.quick else "train_step"
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    md = [
        f"# One training step ({fused['device']}, {size})",
        "",
        "| loss backend | median step (s) | peak step memory (MiB) |",
        "|---|---:|---:|",
    ]
    for label, r in (("fused (auto)", fused), ("eager reference", eager)):
        md.append(f"| {label} | {r['median_s']:.3f} | {r['peak_step_bytes'] / 2**20:.1f} |")
    md += [
        "",
        f"time fused/eager: {summary['time_ratio_fused_over_eager']:.2f}x, "
        f"memory fused/eager: {summary['memory_ratio_fused_over_eager']:.2f}x",
    ]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
