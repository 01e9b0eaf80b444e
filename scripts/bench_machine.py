"""What this CPU gives the demo's kernels: `python scripts/bench_machine.py [--repeats 20] [--json OUT]`.

The same demo ran 2x slower on one 2-core machine than on another, in every stage of a GRPO step alike (vLLM
generation, the learner's update, the audio encoder). This prints the facts that explain such a gap, side by side
for 1 and 2 threads: the CPU model and its vector extensions (AVX2 / AVX-512 / AVX-512 BF16 / AMX), the
instruction set torch dispatches to, and the measured GFLOP/s of the matrix products and attention the demo's
models run (fp32, and bf16 where the CPU may lack native support). Run it on both machines and compare the rows;
nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from funrl.cpu import cpu_model_and_flags

# (name, FLOPs, builder of a zero-argument callable) at the demo's shapes: 24 clips x 8 hypotheses, ~100 positions,
# hidden 192, FFN 512, 6 heads of 32, vocabulary 843; a square GEMM for the machine's peak.
SHAPES = {
    "gemm 1024^3 (peak)": (1024, 1024, 1024),
    "LLM FFN [19200 x 192] @ [192 x 512]": (19200, 192, 512),
    "LLM head [19200 x 192] @ [192 x 843]": (19200, 192, 843),
    "Whisper FFN [7200 x 384] @ [384 x 1536]": (7200, 384, 1536),
}


def cpu_facts() -> dict:
    model, flags = cpu_model_and_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "cpu": model,
        "cores_visible": os.cpu_count(),
        "extensions": {f: f in flags for f in wanted},
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""),
    }


def _timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation, allocation)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def kernels(dtype: torch.dtype) -> dict[str, tuple[float, Callable[[], object]]]:
    gen = torch.Generator().manual_seed(0)
    out: dict[str, tuple[float, Callable[[], object]]] = {}
    for name, (m, k, n) in SHAPES.items():
        a = torch.randn(m, k, generator=gen).to(dtype)
        b = torch.randn(k, n, generator=gen).to(dtype)
        out[name] = (2.0 * m * k * n, functools.partial(torch.matmul, a, b))
    q = torch.randn(192, 6, 100, 32, generator=gen).to(dtype)  # [rows, heads, positions, head_dim]
    out["attention 192 x 6 heads x 100^2 x 32 (sdpa, causal)"] = (
        2 * 2.0 * 192 * 6 * 100 * 100 * 32,
        functools.partial(F.scaled_dot_product_attention, q, q, q, is_causal=True),
    )
    return out


def measure(repeats: int) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, (flops, fn) in kernels(dtype).items():
            row: dict = {"kernel": name, "dtype": str(dtype).replace("torch.", "")}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                row[f"gflops_{threads}t"] = round(flops / _timed(fn, repeats) / 1e9, 1)
            row["2t_over_1t"] = round(row["gflops_2t"] / row["gflops_1t"], 2)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per kernel and thread count (best kept)")
    ap.add_argument("--json", help="also write the facts and rows here")
    args = ap.parse_args(argv)
    facts = cpu_facts()
    print(json.dumps(facts, indent=1))
    rows = measure(args.repeats)
    print("\n| kernel | dtype | GFLOP/s, 1 thread | GFLOP/s, 2 threads | 2 / 1 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['dtype']} | {r['gflops_1t']} | {r['gflops_2t']} | {r['2t_over_1t']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"facts": facts, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
