"""Does bf16 pay on this CPU? The 0.5B's training matmuls in float32 and in bfloat16, side by side in one run.

Issue "Prove the method" asks to try bf16 only where the CPU has native support. Where lscpu lists
avx512_bf16 (or AMX), this times the matrix shapes of one Qwen2.5-Coder-0.5B PG step (hidden 896, MLP 4864,
a 1,024-token chunk of the 152k-word output layer), forward (x @ W^T) and the two backward products, in
float32, in bfloat16 weights and activations, under CPU autocast to bfloat16, and as float32 tensors whose
matmuls oneDNN may run in bf16 (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``). Matmuls are ~72% of a PG
step (bench/results/training.md), so their ratio bounds what bf16 can save. Legs are interleaved and repeated,
and the median is kept, so load on the machine that drifts during the run hits every leg alike.

Results: bench/results/cpu_dtype.json (one entry per CPU model and flag set, others kept), and printed.
Run: python bench/cpu_dtype.py [--threads 2] [--repeats 5]        (about a minute)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
TOKENS = 1024
# (name, in_features, out_features): the 0.5B's projections, and a 1,024-word slice of its output layer
SHAPES = (
    ("attention q/o", 896, 896),
    ("attention k/v", 896, 128),
    ("mlp up/gate", 896, 4864),
    ("mlp down", 4864, 896),
    ("output layer slice", 896, 1024),
)
NATIVE_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of the bf16-relevant flags it has (Linux /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return name, [f for f in NATIVE_FLAGS + ("avx512f", "avx2") if f in flags]


def _step(x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, autocast: bool) -> None:
    """One layer's forward and its two backward matmuls (input and weight gradients)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        F.linear(x, w)
        grad @ w
        grad.t() @ x


def _time(leg: str, shape: tuple[str, int, int], inner: int) -> float:
    if leg == "implicit_bf16":
        matmul = torch.backends.mkldnn.matmul
        before, matmul.fp32_precision = matmul.fp32_precision, "bf16"
        try:
            return _time("float32", shape, inner)
        finally:
            matmul.fp32_precision = before
    _, fan_in, fan_out = shape
    dtype = torch.bfloat16 if leg == "bfloat16" else torch.float32
    x, w = torch.randn(TOKENS, fan_in, dtype=dtype), torch.randn(fan_out, fan_in, dtype=dtype)
    grad = torch.randn(TOKENS, fan_out, dtype=dtype)
    _step(x, w, grad, leg == "autocast")  # warm-up: kernel selection and packing
    started = time.perf_counter()
    for _ in range(inner):
        _step(x, w, grad, leg == "autocast")
    return (time.perf_counter() - started) / inner


def measure(threads: int, repeats: int, inner: int) -> dict:
    torch.set_num_threads(threads)
    legs = ("float32", "bfloat16", "autocast", "implicit_bf16")
    seconds: dict[str, list[float]] = {leg: [] for leg in legs}
    for r in range(repeats):
        for leg in legs[r % len(legs) :] + legs[: r % len(legs)]:  # interleaved, each leg first in turn
            seconds[leg].append(sum(_time(leg, shape, inner) for shape in SHAPES))
    flops = sum(3 * 2 * TOKENS * fan_in * fan_out for _, fan_in, fan_out in SHAPES)
    median = {leg: statistics.median(s) for leg, s in seconds.items()}
    name, flags = cpu_flags()
    return {
        "cpu": name,
        "flags": flags,
        "native_bf16": any(f in flags for f in NATIVE_FLAGS),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "repeats": repeats,
        "gflops": {leg: round(flops / s / 1e9, 1) for leg, s in median.items()},
        "bf16_speedup": round(median["float32"] / median["bfloat16"], 2),
        "autocast_speedup": round(median["float32"] / median["autocast"], 2),
        "implicit_bf16_speedup": round(median["float32"] / median["implicit_bf16"], 2),
        "seconds": {leg: [round(x, 4) for x in s] for leg, s in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=3, help="timed calls per shape and repeat")
    args = parser.parse_args()
    result = measure(args.threads, args.repeats, args.inner)
    path = RESULTS / "cpu_dtype.json"
    kept = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    key = (result["cpu"], tuple(result["flags"]), result["threads"], platform.machine())
    kept["runs"] = [r for r in kept["runs"] if (r["cpu"], tuple(r["flags"]), r["threads"], platform.machine()) != key]
    kept["runs"].append(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept, indent=2) + "\n")
    g = result["gflops"]
    print(
        f"{result['cpu']} ({', '.join(result['flags'])}), torch {result['torch']}, {args.threads} thread(s): "
        f"float32 {g['float32']} GFLOP/s, bfloat16 {g['bfloat16']} ({result['bf16_speedup']}x), "
        f"autocast {g['autocast']} ({result['autocast_speedup']}x), float32 with bf16 matmuls "
        f"{g['implicit_bf16']} ({result['implicit_bf16_speedup']}x); wrote {path}"
    )


if __name__ == "__main__":
    main()
