"""Efficiency benchmark: what internalizing the prompt saves at inference, every variant in one run.

Variants (transformers, one process each so peak memory is per variant):
  base            the model, no prompt (the physical limit of a student)
  teacher         prompt + input, the prompt prefilled on every request (no cache)
  teacher_prefix  the prompt's KV computed once and reused (copied per request), only the input prefilled
  student         the model + LoRA adapter (unmerged), no prompt
  student_merged  the adapter folded into the weights, no prompt
For prompt lengths (tokens) 250 / 1000 / 2000 / 4000: batch-1 latency (p50/p95 over --requests),
batch-16 throughput, time to first token, peak RSS, KV-cache bytes (exact, from shapes), prefill
tokens per request and an analytic FLOPs estimate. Variants without the prompt don't depend on its
length: they are measured once and shown on every row. Every request generates exactly
--new-tokens tokens (greedy, end-of-turn ignored), so all variants do the same decoding work.

Speed and memory don't depend on weight values or on what the tokens say: the prompt is the bundled
example's text repeated to length, the inputs are held-out questions cut to one length, and the adapter
is rank 16 on all projections with random non-zero weights (the shape a trained one has).

Scenarios beside the grid: long prompt (4k) with long outputs, a multi-turn conversation, many
distinct prompts (derived: a round-robin over more agents than a prefix cache holds never hits), and
the context left for the user. The vLLM rows come from bench/efficiency_vllm.py (run in .venv-vllm).

Writes bench/results/efficiency.json, efficiency.md and efficiency.png.
Run: python bench/efficiency.py [--lengths 250,1000,2000,4000] [--requests 8] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SPEC = ROOT / "examples" / "prompts" / "library_desk.yaml"
PROMPT_FREE = ("base", "student", "student_merged")
VARIANTS = ("base", "teacher", "teacher_prefix", "student", "student_merged")
INPUT_TOKENS = 24
BATCH = 16


# --- inputs ---------------------------------------------------------------------------------------
def prompt_ids(tokenizer, n: int) -> list[int]:
    """The bundled prompt's tokens, repeated until there are ``n``."""
    from genpi_core.ingest import load_spec
    from genpi_core.prompt.views import render_prompt

    ids = tokenizer(render_prompt(load_spec(SPEC).prompt), add_special_tokens=False)["input_ids"]
    return (ids * (n // len(ids) + 1))[:n]


def input_ids(tokenizer, k: int) -> list[list[int]]:
    """``k`` held-out-style questions, each exactly INPUT_TOKENS long (so batches need no padding)."""
    from genpi_core.ingest import load_spec

    pool = list(load_spec(SPEC).inputs.pool)
    out = []
    for i in range(k):
        ids = tokenizer(
            f"Question {i}: " + " ".join(pool[(i + j) % len(pool)] for j in range(3)), add_special_tokens=False
        )["input_ids"]
        out.append(ids[:INPUT_TOKENS])
    return out


# --- decoding -------------------------------------------------------------------------------------
def greedy(model, ids, new_tokens: int, past=None) -> tuple[float, float]:
    """Prefill ``ids`` [B, T] (after ``past``, if any), then decode exactly ``new_tokens``. (seconds, ttft)."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=past, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        first = time.perf_counter() - started
        past = out.past_key_values
        for _ in range(new_tokens - 1):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True, logits_to_keep=1)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    return time.perf_counter() - started, first


def kv_bytes_per_token(config, dtype_bytes: int = 4) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype_bytes


def flops(config, params: int, prefill: int, context_before: int, new_tokens: int) -> float:
    """2 x parameters per token (the output layer only for generated positions) plus attention scores
    and values (4 x layers x hidden x context per token); the usual first-order estimate."""
    head = config.hidden_size * config.vocab_size
    body = params - head  # tied embeddings: the lookup costs nothing, the output projection is counted apart
    total = 0.0
    for i in range(prefill + new_tokens - 1):
        context = context_before + i + 1
        total += 2 * body + 4 * config.num_hidden_layers * config.hidden_size * context
    return total + 2 * head * new_tokens


# --- one variant, in its own process ----------------------------------------------------------------
def _load(variant: str, adapter: str, merged: str):
    from genpi_core.generation.models import load_model

    if variant == "student":
        return load_model("embedded", device="cpu", adapter=adapter)
    if variant == "student_merged":
        return load_model(merged, device="cpu")
    return load_model("embedded", device="cpu")


def measure(variant: str, length: int, requests: int, new_tokens: int, adapter: str, merged: str) -> dict:
    import torch

    from genpi_core.generation.models import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded")
    model = _load(variant, adapter, merged)
    config = model.config
    prompt = prompt_ids(tokenizer, length) if variant.startswith("teacher") else []
    inputs = input_ids(tokenizer, max(requests, BATCH))
    prefix = None
    if variant == "teacher_prefix":
        with torch.inference_mode():
            prefix = model(input_ids=torch.tensor([prompt]), use_cache=True).past_key_values  # warm cache, not timed

    def run(rows: list[list[int]]) -> tuple[float, float]:
        if variant == "teacher_prefix":
            past = copy.deepcopy(prefix)
            if len(rows) > 1:
                past.batch_repeat_interleave(len(rows))
            return greedy(model, torch.tensor(rows), new_tokens, past)
        return greedy(model, torch.tensor([prompt + r for r in rows]), new_tokens)

    run(inputs[:1])  # warm-up (allocator, kernels)
    single = [run([inputs[i]]) for i in range(requests)]
    latencies = sorted(s for s, _ in single)
    batch_seconds, _ = run(inputs[:BATCH])
    prefill = (0 if variant == "teacher_prefix" else len(prompt)) + INPUT_TOKENS
    context = len(prompt) + INPUT_TOKENS + new_tokens
    params = sum(p.numel() for p in model.parameters())
    return {
        "variant": variant,
        "prompt_tokens": length if variant.startswith("teacher") else 0,
        "requests": requests,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "ttft_p50_s": statistics.median(f for _, f in single),
        "tok_s_batch1": new_tokens / statistics.median(latencies),
        "tok_s_batch16": BATCH * new_tokens / batch_seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "kv_bytes_per_request": kv_bytes_per_token(config) * context,
        "prefill_tokens_per_request": prefill,
        "gflops_per_request": flops(
            config, params, prefill, len(prompt) if variant == "teacher_prefix" else 0, new_tokens
        )
        / 1e9,
    }


def long_output(length: int, new_tokens: int, adapter: str, merged: str) -> list[dict]:
    """One long prompt and long replies, batch 1: the prefix-cached teacher vs the merged student."""
    return [
        measure(v, length, 3, new_tokens, adapter, merged) | {"scenario": "long"}
        for v in ("teacher_prefix", "student_merged")
    ]


def multi_turn(length: int, turns: int, new_tokens: int, adapter: str, merged: str) -> list[dict]:
    """A conversation of ``turns`` user turns: each turn prefills the history so far (no session cache), the
    teacher also the prompt (or reuses its cached KV); total seconds and prefill tokens over the conversation."""
    import torch

    from genpi_core.generation.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    prompt = prompt_ids(tokenizer, length)
    user = input_ids(tokenizer, turns)
    rows = []
    for variant in ("teacher", "teacher_prefix", "student_merged", "base"):
        model = _load(variant, adapter, merged)
        prefix = None
        if variant == "teacher_prefix":
            with torch.inference_mode():
                prefix = model(input_ids=torch.tensor([prompt]), use_cache=True).past_key_values
        history: list[int] = []
        seconds, prefilled = 0.0, 0
        for turn in range(turns):
            history = history + user[turn]
            ids = history if variant in ("teacher_prefix", "student_merged", "base") else prompt + history
            took, _ = greedy(
                model, torch.tensor([ids]), new_tokens, copy.deepcopy(prefix) if prefix is not None else None
            )
            seconds, prefilled = seconds + took, prefilled + len(ids)
            history = history + [tokenizer.eos_token_id] * new_tokens  # stand-in reply of the same length
        rows.append(
            {
                "scenario": "multi_turn",
                "variant": variant,
                "turns": turns,
                "seconds": seconds,
                "prefill_tokens": prefilled,
            }
        )
    return rows


def _child(args) -> None:
    job = json.loads(args.child)
    kind = job.pop("kind")
    result = {"grid": measure, "long": long_output, "multi_turn": multi_turn}[kind](**job)
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(job: dict) -> dict | list:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"benchmark child {job} failed:\n{proc.stderr[-3000:]}")


# --- parent: adapter, grid, scenarios, report ---------------------------------------------------------
def _make_adapter(folder: Path) -> tuple[str, str]:
    import torch

    from genpi_core.generation.models import load_model
    from genpi_core.train.recipe import attach_lora
    from schemas.config import LoraConfig

    torch.manual_seed(0)
    model = attach_lora(load_model("embedded", device="cpu"), LoraConfig())
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)  # a trained adapter's shape and non-zero weights
    model.save_pretrained(folder / "adapter")
    model.merge_and_unload().save_pretrained(folder / "merged")
    from genpi_core.generation.models import load_tokenizer

    load_tokenizer("embedded").save_pretrained(folder / "merged")
    return str(folder / "adapter"), str(folder / "merged")


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def render(results: dict) -> str:
    grid = results["grid"]
    lines = [
        "# Inference efficiency: prompt vs internalized prompt (embedded SmolLM2-135M, transformers, CPU)",
        "",
        f"Machine: {results['machine']}. {results['new_tokens']} generated tokens per request (greedy, fixed length), "
        f"inputs of {INPUT_TOKENS} tokens, batch-1 latency over {results['requests']} requests, batch {BATCH} for throughput. "
        "Speed and memory don't depend on weight values or token content (random-weight adapter of the trained shape; "
        "the prompt text repeated to length). Variants without the prompt are measured once and repeated on each row.",
        "",
    ]
    if results.get("note"):
        lines += [f"**Note:** {results['note']}", ""]
    lines += [
        "| prompt tokens | variant | p50 s | p95 s | TTFT p50 s | tok/s batch 1 | tok/s batch 16 | peak RSS GB | KV MB / request | prefill tokens | GFLOPs / request |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for length in results["lengths"]:
        for variant in VARIANTS:
            r = grid[f"{variant}@{length}"]
            lines.append(
                f"| {length} | {variant} | {_fmt(r['p50_s'])} | {_fmt(r['p95_s'])} | {_fmt(r['ttft_p50_s'])} | "
                f"{r['tok_s_batch1']:.1f} | {r['tok_s_batch16']:.1f} | {r['peak_rss_gb']:.2f} | "
                f"{r['kv_bytes_per_request'] / 1e6:.1f} | {r['prefill_tokens_per_request']} | {r['gflops_per_request']:.1f} |"
            )
    lines += ["", "## Targets at 1,000 prompt tokens", "", "| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "## Scenarios", ""]
    s = results["scenarios"]
    lines += ["| scenario | variant | seconds | detail |", "|---|---|---|---|"]
    for r in s["long"]:
        lines.append(
            f"| {s['long_prompt']}-token prompt, {s['long_new_tokens']}-token reply | {r['variant']} | {_fmt(r['p50_s'])} | "
            f"{r['tok_s_batch1']:.1f} tok/s |"
        )
    for r in s["multi_turn"]:
        lines.append(
            f"| {r['turns']}-turn conversation, {s['multi_turn_prompt']}-token prompt | {r['variant']} | {_fmt(r['seconds'])} | "
            f"{r['prefill_tokens']} prefill tokens in all |"
        )
    m = s["many_prompts"]
    lines.append(
        f"| {m['agents']} agents round-robin, cache of {m['cache_prompts']} prompts | teacher_prefix | "
        f"{_fmt(m['teacher_s'])} | 0 cache hits: every request prefills its prompt (= teacher row) |"
    )
    lines.append(
        f"| same | student_merged | {_fmt(m['student_s'])} | one merged model per agent; unmerged: one adapter each |"
    )
    c = s["context"]
    lines += [
        "",
        f"Context left for the user (model limit {c['limit']} tokens): "
        + ", ".join(f"{n}-token prompt: {c['left'][str(n)]}" for n in results["lengths"])
        + f"; internalized: {c['limit']}.",
        "",
    ]
    lines += ["## Where internalization does not win", ""] + [f"- {line}" for line in results["caveats"]] + [""]
    lines += ["Plot: `efficiency.png`. Raw numbers: `efficiency.json`. vLLM rows: `efficiency_vllm.md`.", ""]
    return "\n".join(lines)


def targets(grid: dict) -> list[dict]:
    t, tp, s, m, b = (grid[f"{v}@1000"] for v in ("teacher", "teacher_prefix", "student", "student_merged", "base"))
    out = []
    for batch, key in ((1, "p50_s"), (16, "tok_s_batch16")):
        ratio = (s[key] / t[key]) if key == "p50_s" else (t[key] / s[key])
        out.append(
            {
                "target": f"student latency <= 0.4x teacher without cache (batch {batch})",
                "measured": f"{ratio:.2f}x",
                "met": ratio <= 0.4,
            }
        )
        merged = (m[key] / b[key]) if key == "p50_s" else (b[key] / m[key])
        out.append(
            {
                "target": f"merged student within 1.05x of base (batch {batch})",
                "measured": f"{merged:.2f}x",
                "met": merged <= 1.05,
            }
        )
    out.append(
        {
            "target": "KV memory <= 0.5x the teacher's",
            "measured": f"{m['kv_bytes_per_request'] / t['kv_bytes_per_request']:.2f}x",
            "met": m["kv_bytes_per_request"] / t["kv_bytes_per_request"] <= 0.5,
        }
    )
    return out


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genpi_core.store.stage import atomic_save_figure

    lengths = results["lengths"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for variant in VARIANTS:
        rows = [results["grid"][f"{variant}@{n}"] for n in lengths]
        ax1.plot(lengths, [r["p50_s"] for r in rows], marker="o", label=variant)
        ax2.plot(lengths, [r["kv_bytes_per_request"] / 1e6 for r in rows], marker="o", label=variant)
    ax1.set(xlabel="prompt tokens", ylabel="batch-1 latency p50 (s)", title="Latency per request")
    ax2.set(xlabel="prompt tokens", ylabel="KV cache MB per request", title="KV memory per request")
    ax1.legend(fontsize=8)
    atomic_save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="250,1000,2000,4000")
    parser.add_argument("--requests", type=int, default=8, help="batch-1 requests per variant (latency percentiles)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--long-new-tokens", type=int, default=256)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--note", default="", help="a line for the report, e.g. what else ran on the machine")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    import torch

    from genpi_core.generation.models import load_model

    lengths = [int(x) for x in args.lengths.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        adapter, merged = _make_adapter(Path(tmp))
        common = {"requests": args.requests, "new_tokens": args.new_tokens, "adapter": adapter, "merged": merged}
        grid = {}
        for variant in VARIANTS:
            for length in lengths[:1] if variant in PROMPT_FREE else lengths:
                print(f"measuring {variant} at {length} prompt tokens", flush=True)
                row = _spawn({"kind": "grid", "variant": variant, "length": length, **common})
                for n in lengths if variant in PROMPT_FREE else [length]:
                    grid[f"{variant}@{n}"] = row
        long_prompt = max(lengths)
        print("scenarios", flush=True)
        long_rows = _spawn(
            {
                "kind": "long",
                "length": long_prompt,
                "new_tokens": args.long_new_tokens,
                "adapter": adapter,
                "merged": merged,
            }
        )
        turns = _spawn(
            {
                "kind": "multi_turn",
                "length": 1000,
                "turns": args.turns,
                "new_tokens": args.new_tokens,
                "adapter": adapter,
                "merged": merged,
            }
        )
    limit = load_model("embedded", device="cpu").config.max_position_embeddings
    t1000, m1000 = grid["teacher@1000"], grid["student_merged@1000"]
    results = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "lengths": lengths,
        "requests": args.requests,
        "new_tokens": args.new_tokens,
        "grid": grid,
        "targets": targets(grid),
        "scenarios": {
            "long_prompt": long_prompt,
            "long_new_tokens": args.long_new_tokens,
            "long": long_rows,
            "multi_turn_prompt": 1000,
            "multi_turn": turns,
            "many_prompts": {
                "agents": 50,
                "cache_prompts": 8,
                "teacher_s": t1000["p50_s"],
                "student_s": m1000["p50_s"],
            },
            "context": {"limit": limit, "left": {str(n): limit - n for n in lengths}},
        },
        "seconds": round(time.perf_counter() - started, 1),
        "note": args.note,
    }
    tp, b = grid["teacher_prefix@1000"], grid["base@1000"]
    results["caveats"] = [
        f"With its KV prefix cached, the teacher at 1,000 prompt tokens costs {tp['p50_s'] / b['p50_s']:.2f}x the base "
        f"model's batch-1 latency (the student merged: {m1000['p50_s'] / b['p50_s']:.2f}x): for one fixed prompt and a "
        "warm cache, internalization saves little time; the savings are KV memory per request, context, and the cases "
        "where the cache misses (many prompts, evictions, cold starts).",
        f"The unmerged adapter costs {grid['student@1000']['p50_s'] / b['p50_s']:.2f}x the base latency at batch 1 "
        f"and {b['tok_s_batch16'] / grid['student@1000']['tok_s_batch16']:.2f}x at batch 16: merge for one-prompt serving.",
        "Internalization costs a training run per prompt version and recovers only part of the prompted behaviour "
        "(see the quality results); a prompt that changes per request cannot be internalized.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "efficiency.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "efficiency.md").write_text(render(results))
    _plot(results, RESULTS / "efficiency.png")
    print(render(results))


if __name__ == "__main__":
    main()
