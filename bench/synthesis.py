"""Benchmark: role-swapped synthesis, batched per turn (ours) vs one conversation at a time (research code).

Both sides run the same episodes with the same model, engine and machine, greedy:
  research-loop  for each conversation, for each turn: agent (with prompt), base (no prompt) and
                 environment replies, each a batch-size-1 request with the full context, as the
                 research code does. transformers: `generate()` (no prefix reuse); vllm: one
                 request per call (the engine's prefix cache stays on, as a user would run it).
  genpi          genpi_core.synth.conversations.run_conversations: one generate call per role per turn
                 across all live conversations (transformers: the prompt's prefix computed once per call).
The metric is generated tokens per second, every generated token counted on both sides (turns
later quarantined included). A batch-size-1 loop runs at a fixed rate, so it is measured on the
first --baseline-n conversations; ours on all --n. Engine start-up is reported apart.
Writes bench/results/synthesis.json (one entry per backend, others kept) and synthesis.md.
Run: python bench/synthesis.py [--backend transformers|vllm] [--n 64] [--baseline-n 8] [--turns 2] [--tokens 48]
     (vllm: in .venv-vllm, see scripts/setup_vllm.sh)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from genpi_core.environment.simulated import environment_view
from genpi_core.generation.factory import make_backend
from genpi_core.ingest import load_spec
from genpi_core.prompt.views import input_turn, with_prompt, without_prompt
from genpi_core.store.tables import read_table
from genpi_core.synth.conversations import run_conversations
from genpi_core.synth.inputs import run_inputs
from schemas.config import BackendConfig, InputsConfig, ModelConfig, SamplingConfig
from schemas.datasets import InputsSchema

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


class CountingBackend:
    """Wraps an engine and counts the tokens it generates (every completion, kept or not)."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.tokens, self.calls = inner, inner.name, 0, 0

    def generate(self, conversations, sampling, desc="generate"):
        out = self.inner.generate(conversations, sampling, desc=desc)
        self.tokens += sum(c.completion_tokens for c in out)
        self.calls += 1
        return out

    def close(self) -> None:
        pass


def _hf_generate_one(backend, messages, max_new_tokens: int) -> tuple[str, int]:
    """Batch-size-1 transformers generate() on the full context, like the research code."""
    ids = torch.tensor([backend.encode(messages)], device=backend.device)
    with torch.no_grad():
        out = backend.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=backend.tokenizer.pad_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    return backend.tokenizer.decode(new, skip_special_tokens=True).strip(), len(new)


def _engine_generate_one(backend, messages, max_new_tokens: int) -> tuple[str, int]:
    reply = backend.generate([messages], SamplingConfig(max_new_tokens=max_new_tokens))[0]
    return reply.text, reply.completion_tokens


def research_loop(spec, backend, kind: str, texts: list[str], turns: int, tokens: int) -> tuple[float, int]:
    one = _hf_generate_one if kind == "transformers" else _engine_generate_one
    marker = spec.conversation.end_marker
    started, generated = time.perf_counter(), 0
    for text in texts:
        conversation = input_turn(spec.prompt, text)
        for turn in range(turns):
            agent, n = one(backend, with_prompt(spec.prompt, conversation), tokens)
            generated += n + one(backend, without_prompt(conversation), tokens)[1]
            conversation.append({"role": "assistant", "content": agent})
            if turn + 1 == turns:
                break
            env, n = one(backend, environment_view(spec, conversation), tokens)
            generated += n
            if marker in env or not env:
                break
            conversation.append({"role": "user", "content": env})
    return time.perf_counter() - started, generated


def _machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _write_markdown(results: dict) -> None:
    lines = [
        "# Synthesis throughput: batched per turn vs a batch-size-1 loop",
        "",
        "Same episodes, model, engine and machine on both sides, greedy; every generated token counted.",
        "",
        "| backend | machine | path | conversations | seconds | generated tokens | tokens/s | speed-up | engine start-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        loop, ours = r["research_loop"], r["genpi"]
        lines.append(
            f"| {kind} | {r['machine']} | research-code loop (batch size 1) | {loop['conversations']} | "
            f"{loop['seconds']} | {loop['tokens']} | {loop['tokens_per_s']} | 1.00x | {r['startup_seconds']} s |"
        )
        lines.append(
            f"| {kind} | {r['machine']} | genpi, batched per turn | {ours['conversations']} | {ours['seconds']} | "
            f"{ours['tokens']} | {ours['tokens_per_s']} | **{r['speedup']}x** | (same engine) |"
        )
    first = next(iter(results.values()))
    lines += ["", f"Model: {first['model']}. Prompt: {first['prompt']}. Settings: {json.dumps(first['settings'])}.", ""]
    (RESULTS / "synthesis.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--n", type=int, default=64, help="conversations for the batched path")
    parser.add_argument("--baseline-n", type=int, default=8, help="conversations for the batch-size-1 loop")
    parser.add_argument("--turns", type=int, default=2, help="agent turns per conversation")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per reply")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward batch (transformers)")
    args = parser.parse_args()
    spec = load_spec(ROOT / "examples" / "prompts" / "library_desk.yaml")
    spec = spec.model_copy(update={"conversation": spec.conversation.model_copy(update={"max_turns": args.turns})})
    work = Path(tempfile.mkdtemp(prefix="genpi-bench-synth-"))
    run_inputs(spec, "bench" * 13, InputsConfig(max_inputs=args.n), None, work)
    texts = read_table(work / "inputs.parquet", InputsSchema)["text"].tolist()

    t0 = time.perf_counter()
    engine = make_backend(
        ModelConfig(), BackendConfig(kind=args.backend, batch_size=args.batch_size, max_model_len=4096)
    )
    startup = time.perf_counter() - t0
    sampling = SamplingConfig(max_new_tokens=args.tokens)

    counting = CountingBackend(engine)
    started = time.perf_counter()
    rows = run_conversations(
        spec, work / "inputs.parquet", counting, sampling, sampling, sampling, args.turns, work / "genpi"
    )
    ours_s = time.perf_counter() - started
    base_s, base_tokens = research_loop(spec, engine, args.backend, texts[: args.baseline_n], args.turns, args.tokens)
    ours_rate, base_rate = counting.tokens / ours_s, base_tokens / base_s
    result = {
        "machine": _machine(),
        "model": "embedded SmolLM2-135M-Instruct (fp32)",
        "prompt": "examples/prompts/library_desk.yaml (1,522 prompt tokens)",
        "settings": vars(args),
        "startup_seconds": round(startup, 1),
        "genpi": {
            "conversations": args.n,
            "seconds": round(ours_s, 1),
            "tokens": counting.tokens,
            "tokens_per_s": round(ours_rate, 1),
            "generate_calls": counting.calls,
            "agent_turns": rows["agent_turns"],
        },
        "research_loop": {
            "conversations": args.baseline_n,
            "seconds": round(base_s, 1),
            "tokens": base_tokens,
            "tokens_per_s": round(base_rate, 1),
        },
        "speedup": round(ours_rate / base_rate, 2),
    }
    engine.close()
    print(json.dumps(result, indent=2))
    print(f"{args.backend}: speed-up, tokens/s: {result['speedup']}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "synthesis.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    results = {k: v for k, v in previous.items() if isinstance(v, dict) and "speedup" in v}
    results[args.backend] = result
    path.write_text(json.dumps(results, indent=2) + "\n")
    _write_markdown(results)


if __name__ == "__main__":
    main()
