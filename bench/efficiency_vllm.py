"""Efficiency on vLLM: the baseline a production user already has (automatic prefix caching) vs the student.

Run in the vLLM venv (scripts/setup_vllm.sh): .venv-vllm/bin/python bench/efficiency_vllm.py
Each engine runs in its own process (vLLM keeps its engine core in a child process; separate
processes keep their KV caches and cores from overlapping):
  plain  prefix caching on: base (no prompt); teacher_apc (the prompt's blocks warm in the cache, only the
         input prefilled); teacher_cold (a distinct prompt per request, so the cache never hits)
  lora   LoRA enabled: student_lora (adapter, no prompt) and base on the same LoRA-enabled engine
  many   KV cache too small for every agent's prompt: --agents distinct 1k-token prompts round-robin
         (second pass timed), against one hot prompt on the same engine
Same prompts, inputs, fixed output length and random-weight adapter as bench/efficiency.py (speed does not
depend on weight values). Writes bench/results/efficiency_vllm.json and efficiency_vllm.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from efficiency import BATCH, RESULTS, input_ids, kv_bytes_per_token, prompt_ids  # noqa: E402


def _engine(kv_gib: int, lora: bool, max_model_len: int = 8192, max_loras: int = 1, max_cpu_loras: int | None = None):
    from vllm import LLM

    from genpi_core.generation.models import resolve_model

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_gib:g}"
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    path = resolve_model("embedded")
    extra = {"enable_lora": True, "max_lora_rank": 16, "max_loras": max_loras} if lora else {}
    if lora and max_cpu_loras:
        extra["max_cpu_loras"] = max_cpu_loras
    started = time.perf_counter()
    llm = LLM(
        model=path,
        tokenizer=path,
        dtype="float32",
        seed=0,
        enable_prefix_caching=True,
        enforce_eager=True,
        max_model_len=max_model_len,
        **extra,
    )
    return llm, time.perf_counter() - started


def _timed(llm, prompts: list[list[int]], new_tokens: int, lora=None) -> float:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    started = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, lora_request=lora, use_tqdm=False)
    return time.perf_counter() - started


def _row(
    llm,
    variant: str,
    length: int,
    prompts_1: list[list[int]],
    batch: list[list[int]],
    new_tokens: int,
    kv_per_token: int,
    lora=None,
) -> dict:
    for _ in range(3):  # warm-up (and, for teacher_apc, the prompt's blocks); one was too few for the first row
        _timed(llm, prompts_1[:1], new_tokens, lora)
    latencies = sorted(_timed(llm, [p], new_tokens, lora) for p in prompts_1[1:])
    batch_s = _timed(llm, batch, new_tokens, lora)
    # what one request's sequence holds in the KV cache while it decodes (a warm prompt's blocks are shared
    # between the requests of one agent, but they stay in the cache all the same)
    kv_mb = (len(prompts_1[-1]) + new_tokens) * kv_per_token / 1e6
    return {
        "variant": variant,
        "prompt_tokens": length,
        "requests": len(latencies),
        "kv_mb_per_request": round(kv_mb, 2),
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[round(0.95 * (len(latencies) - 1))],
        "tok_s_batch1": new_tokens / statistics.median(latencies),
        "tok_s_batch16": len(batch) * new_tokens / batch_s,
        "prefill_tokens_per_request": len(prompts_1[-1]) if variant != "teacher_apc" else len(prompts_1[-1]) - length,
    }


def _distinct(prompt: list[int], i: int, vocab_offset: int = 1000) -> list[int]:
    """A prompt that shares no cache block with any other: its first token differs."""
    return [vocab_offset + i] + prompt[1:]


def child(job: dict) -> list[dict]:
    from transformers import AutoConfig

    from genpi_core.generation.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer("embedded")
    config = AutoConfig.from_pretrained(resolve_model("embedded"))
    n, new_tokens, lengths = job["requests"], job["new_tokens"], job["lengths"]
    inputs = input_ids(tokenizer, max(n + 1, BATCH) + 1)
    kv = kv_bytes_per_token(config)
    rows = []
    if job["engine"] == "plain":
        llm, startup = _engine(2, lora=False)
        rows.append(_row(llm, "base", 0, inputs[: n + 1], inputs[:BATCH], new_tokens, kv))
        for length in lengths:
            prompt = prompt_ids(tokenizer, length)
            rows.append(
                _row(
                    llm,
                    "teacher_apc",
                    length,
                    [prompt + x for x in inputs[: n + 1]],
                    [prompt + x for x in inputs[:BATCH]],
                    new_tokens,
                    kv,
                )
            )
            cold = [_distinct(prompt, length + i) + x for i, x in enumerate(inputs[: n + 1])]
            cold_batch = [_distinct(prompt, length + 100 + i) + x for i, x in enumerate(inputs[:BATCH])]
            rows.append(_row(llm, "teacher_cold", length, cold, cold_batch, new_tokens, kv))
    elif job["engine"] == "lora":
        from vllm.lora.request import LoRARequest

        llm, startup = _engine(2, lora=True)
        rows.append(_row(llm, "base_on_lora_engine", 0, inputs[: n + 1], inputs[:BATCH], new_tokens, kv))
        rows.append(
            _row(
                llm,
                "student_lora",
                0,
                inputs[: n + 1],
                inputs[:BATCH],
                new_tokens,
                kv,
                LoRARequest("student", 1, job["adapter"]),
            )
        )
    else:  # many agents, a cache smaller than their prompts
        llm, startup = _engine(job["kv_gib"], lora=False, max_model_len=2048)  # a small cache must hold one sequence
        prompt = prompt_ids(tokenizer, 1000)
        agents = [_distinct(prompt, i) for i in range(job["agents"])]
        for i, p in enumerate(agents):  # first pass fills (and overflows) the cache
            _timed(llm, [p + inputs[i % len(inputs)]], new_tokens)
        second = sorted(_timed(llm, [p + inputs[(i + 1) % len(inputs)]], new_tokens) for i, p in enumerate(agents))
        hot = sorted(_timed(llm, [agents[0] + x], new_tokens) for x in inputs[:8])
        cached_tokens = job["kv_gib"] * 2**30 / kv_bytes_per_token(config)
        rows.append(
            {
                "variant": "teacher_many_agents",
                "agents": job["agents"],
                "kv_gib": job["kv_gib"],
                "prompts_the_cache_holds": round(cached_tokens / 1024, 1),
                "p50_s": statistics.median(second),
                "p95_s": second[round(0.95 * (len(second) - 1))],
                "hot_prompt_p50_s": statistics.median(hot),
            }
        )
    for row in rows:
        row["engine_startup_s"] = round(startup, 1)
    return rows


def _spawn(job: dict, script: str = __file__) -> list[dict]:
    """Run one engine in its own process (``script --child JOB``); also samples the RSS of its process tree
    (vLLM's engine core is a child) every 0.2 s, so each row carries the engine's peak memory (KV cache
    preallocated included)."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, script, "--child", json.dumps(job)], stdout=out, stderr=err, text=True)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            rows = json.loads(line[len("RESULT ") :])
            for row in rows:
                row["engine"], row["engine_peak_rss_gb"] = job["engine"], round(peak / 2**30, 2)
            return rows
    raise RuntimeError(f"vLLM benchmark child {job['engine']} failed:\n{stderr[-4000:]}")


def render(results: dict) -> str:
    lines = [
        "# Inference efficiency on vLLM (vllm-cpu 0.32.0, embedded SmolLM2-135M fp32, CPU)",
        "",
        f"{results['new_tokens']} generated tokens per request (greedy, fixed length); batch-1 latency over "
        f"{results['requests']} requests; batch {BATCH} for throughput; prefix caching on; engine start-up not counted.",
        "",
        "| prompt tokens | variant | p50 s | p95 s | tok/s batch 1 | tok/s batch 16 | prefill tokens / request | KV MB held / request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if "tok_s_batch1" not in r:
            continue
        lines.append(
            f"| {r['prompt_tokens']} | {r['variant']} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['tok_s_batch1']:.1f} | "
            f"{r['tok_s_batch16']:.1f} | {r['prefill_tokens_per_request']} | {r.get('kv_mb_per_request', 'n/a')} |"
        )
    many = next(r for r in results["rows"] if r["variant"] == "teacher_many_agents")
    base = next(r for r in results["rows"] if r["variant"] == "base")
    lines += [
        "",
        "## Many agents, one engine",
        "",
        f"{many['agents']} distinct 1,000-token prompts round-robin with a {many['kv_gib']} GiB KV cache "
        f"(holds about {many['prompts_the_cache_holds']} such prompts): p50 {many['p50_s']:.3f} s per request, against "
        f"{many['hot_prompt_p50_s']:.3f} s when one prompt stays hot and {base['p50_s']:.3f} s without a prompt "
        "(what a merged student costs on vLLM; one LoRA per agent costs the student_lora row).",
        "",
    ]
    engines = {r["engine"]: r for r in results["rows"] if "engine" in r}
    lines += [
        "## Memory",
        "",
        "Peak RSS of each engine's process tree (the KV cache is preallocated: 2 GiB for `plain` and `lora`, "
        f"{many['kv_gib']} GiB for `many`), sampled every 0.2 s: "
        + ", ".join(f"{name} {r['engine_peak_rss_gb']:.2f} GiB" for name, r in engines.items())
        + ". The KV column above is what one request's sequence holds in that cache while it decodes: "
        "the teacher's grows with its prompt, the student's does not.",
        "",
    ]
    lines += ["## Ratios", ""] + [f"- {k}: {v}" for k, v in results["ratios"].items()] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="250,1000,2000,4000")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--agents", type=int, default=30)
    parser.add_argument(
        "--kv-gib", type=int, default=1, help="KV cache of the many-agents engine (GiB; vllm-cpu takes whole GiB)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    from efficiency import _make_adapter

    lengths = [int(x) for x in args.lengths.split(",")]
    common = {"requests": args.requests, "new_tokens": args.new_tokens, "lengths": lengths}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        adapter, _ = _make_adapter(Path(tmp))
        rows = []
        for engine in ("plain", "lora", "many"):
            print(f"vLLM engine: {engine}", flush=True)
            rows += _spawn(
                {"engine": engine, "adapter": adapter, "agents": args.agents, "kv_gib": args.kv_gib, **common}
            )
    by = {(r["variant"], r.get("prompt_tokens")): r for r in rows}
    base, student = by[("base", 0)], by[("student_lora", 0)]
    ratios = {
        "student_lora / base latency (batch 1)": f"{student['p50_s'] / base['p50_s']:.2f}x",
        "base / student_lora throughput (batch 16)": f"{base['tok_s_batch16'] / student['tok_s_batch16']:.2f}x",
        "base on the LoRA engine / base latency": f"{by[('base_on_lora_engine', 0)]['p50_s'] / base['p50_s']:.2f}x",
    }
    for length in lengths:
        apc, cold = by[("teacher_apc", length)], by[("teacher_cold", length)]
        ratios[f"{length} tokens: teacher_apc / base latency"] = f"{apc['p50_s'] / base['p50_s']:.2f}x"
        ratios[f"{length} tokens: teacher_cold / base latency"] = f"{cold['p50_s'] / base['p50_s']:.2f}x"
        ratios[f"{length} tokens: base / teacher_apc throughput (batch 16)"] = (
            f"{base['tok_s_batch16'] / apc['tok_s_batch16']:.2f}x"
        )
    results = {
        "new_tokens": args.new_tokens,
        "requests": args.requests,
        "lengths": lengths,
        "rows": rows,
        "ratios": ratios,
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "efficiency_vllm.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "efficiency_vllm.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
