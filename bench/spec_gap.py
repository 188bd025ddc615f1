"""With the prompt vs without it: per-check pass rates of a spec on its held-out inputs, no training.

A check is worth keeping in a spec only if the model follows it clearly more often with the prompt than
without; this measures that gap on the spec's inputs.eval, greedy, with the same "with"/"without"
views (genpi_core.prompt.views) and the same check evaluators (genpi_core.prompt.checks) the evaluation stage uses.
Run: python bench/spec_gap.py examples/prompts/hotel_concierge.yaml [--limit 10] [--max-new-tokens 64] [--show 5]
"""

from __future__ import annotations

import argparse
import time

from genpi_core.generation.factory import make_backend
from genpi_core.ingest import load_spec
from genpi_core.prompt.checks import run_checks
from genpi_core.prompt.views import input_turn, with_prompt, without_prompt
from schemas.config import BackendConfig, ModelConfig, SamplingConfig


def _rates(spec, items, replies) -> dict[str, float]:
    """Pass rate per check name, plus 'facts' (over items with facts) and 'score' (the evaluation's partial credit)."""
    per_item = [run_checks(spec.checks, reply, item.facts) for item, reply in zip(items, replies)]
    names = [f"{i}:{c.type}" for i, c in enumerate(spec.checks)]
    rates = {name: sum(r[name] for r in per_item) / len(per_item) for name in names}
    rates["format (all global)"] = sum(all(r[n] for n in names) for r in per_item) / len(per_item)
    facts = [v for r in per_item for k, v in r.items() if k.startswith("fact:")]
    rates["facts"] = sum(facts) / len(facts) if facts else float("nan")
    rates["score"] = sum(sum(r.values()) / len(r) for r in per_item) / len(per_item)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    parser.add_argument("--limit", type=int, default=None, help="only the first N eval inputs")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="as evaluate.sampling in configs/default.yaml")
    parser.add_argument("--show", type=int, default=4, help="print this many replies of each view")
    parser.add_argument("--only-with", action="store_true", help="skip the without-prompt view (format iteration)")
    args = parser.parse_args()

    spec = load_spec(args.spec)
    items = spec.inputs.eval[: args.limit]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    engine = make_backend(ModelConfig(), BackendConfig(batch_size=8))
    views = {"with": [with_prompt(spec.prompt, input_turn(spec.prompt, i.text)) for i in items]}
    if not args.only_with:
        views["without"] = [without_prompt(input_turn(spec.prompt, i.text)) for i in items]
    results = {}
    for name, conversations in views.items():
        started = time.perf_counter()
        replies = [c.text for c in engine.generate(conversations, sampling, desc=name)]
        results[name] = _rates(spec, items, replies)
        print(f"--- {name} the prompt: {time.perf_counter() - started:.0f} s", flush=True)
        for item, reply in list(zip(items, replies))[: args.show]:
            print(f"> {item.text}\n{reply}\n")
    engine.close()

    print(f"{spec.name}: {len(items)} held-out inputs, greedy, {args.max_new_tokens} new tokens")
    print(f"{'check':<40} " + " ".join(f"{v:>8}" for v in results))
    for check in results["with"]:
        cells = " ".join(
            f"{round(r[check] * len(items)):>4}/{len(items):<3}"
            if check not in ("facts", "score")
            else f"{r[check]:>8.2f}"
            for r in results.values()
        )
        print(f"{check:<40} {cells}")


if __name__ == "__main__":
    main()
