"""The multi-tenant benchmark's arrival orders, ratios and table (no engine: control logic only)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))


def test_pure_logic_arrivals_ratios_and_the_goal_line():
    multitenant = importlib.import_module("multitenant")
    assert multitenant.arrivals("round_robin", 8, 16) == list(range(8)) * 2
    skewed = multitenant.arrivals("zipf", 32, 2000, seed=1)
    counts = [skewed.count(a) for a in range(32)]
    assert counts[0] > 5 * counts[31] and sum(counts) == 2000  # a few agents get most requests
    rows = [
        {"mode": m, "agents": 32, "order": o, "throughput_tok_s": t, "p50_s": 1.0, "p95_s": 2.0}
        for o in ("round_robin", "zipf")
        for m, t in (("prefix", 10.0), ("lora", 25.0), ("base", 50.0))
    ]
    r = multitenant.ratios(rows)
    assert r["n32_lora_over_prefix_cache_throughput"] == 2.5 and r["n32_base_over_lora_throughput_zipf"] == 2.0
    text = multitenant.render(
        {"requests": 64, "concurrency": 8, "new_tokens": 16, "kv_gib": 1, "adapter_mb_each": 3.5, "rows": rows}
        | {"ratios": r}
    )
    assert "= 2.50 (goal >= 2.0: met)" in text and "| 32 | zipf | lora | 25.0 |" in text
