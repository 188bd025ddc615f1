"""Benchmark: role-swapped synthesis, batched per turn (ours) vs one conversation at a time (research code).

Both sides run the same episodes with the same model on the same machine, greedy:
  research-loop  for each conversation, for each turn: agent (with prompt), base (no prompt) and
                 environment replies, each a batch-size-1 `generate()` call with the full context,
                 as the research code does (no prefix reuse).
  genpi          genpi_core.conversations.run_conversations: one generate call per role per turn
                 across all live conversations, the prompt's prefix computed once per call.
The metric is generated tokens per second (agent + base + environment turns). A batch-size-1 loop
runs at a fixed rate, so it is measured on the first --baseline-n conversations; ours on all --n.
Start-up (model load) is reported apart. Writes bench/results/synthesis.json and synthesis.md.
Run: python bench/synthesis.py [--n 64] [--baseline-n 8] [--turns 2] [--tokens 48] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from genpi_core.chat import with_prompt, without_prompt
from genpi_core.conversations import environment_view, run_conversations
from genpi_core.generation.base import make_backend
from genpi_core.ingest import load_spec
from genpi_core.synth import run_inputs
from genpi_core.tables import read_table
from schemas.config import BackendConfig, InputsConfig, ModelConfig, SamplingConfig
from schemas.datasets import InputsSchema, MessagesSchema, TargetsSchema

ROOT = Path(__file__).resolve().parents[1]


def _generate_one(backend, messages, max_new_tokens: int) -> tuple[str, int]:
    """Batch-size-1 transformers generate() on the full context, like the research code."""
    tok = backend.tokenizer
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
              return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = backend.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids.input_ids.shape[1]:].tolist()
    return tok.decode(new, skip_special_tokens=True).strip(), len(new)


def research_loop(spec, backend, texts: list[str], turns: int, tokens: int) -> tuple[float, int]:
    marker = spec.conversation.end_marker
    started, generated = time.perf_counter(), 0
    for text in texts:
        conversation = [{"role": "user", "content": text}]
        for turn in range(turns):
            agent, n = _generate_one(backend, with_prompt(spec.prompt, conversation), tokens)
            generated += n
            generated += _generate_one(backend, without_prompt(conversation), tokens)[1]
            conversation.append({"role": "assistant", "content": agent})
            if turn + 1 == turns:
                break
            env, n = _generate_one(backend, environment_view(spec, conversation), tokens)
            generated += n
            if marker in env or not env:
                break
            conversation.append({"role": "user", "content": env})
    return time.perf_counter() - started, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--baseline-n", type=int, default=8)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    spec = load_spec(ROOT / "examples" / "prompts" / "library_desk.yaml")
    spec = spec.model_copy(update={"conversation": spec.conversation.model_copy(update={"max_turns": args.turns})})
    work = Path(tempfile.mkdtemp(prefix="genpi-bench-synth-"))
    run_inputs(spec, "bench" * 13, InputsConfig(max_inputs=args.n), None, work)
    texts = read_table(work / "inputs.parquet", InputsSchema)["text"].tolist()

    t0 = time.perf_counter()
    backend = make_backend(ModelConfig(), BackendConfig(batch_size=args.batch_size))
    startup = time.perf_counter() - t0
    sampling = SamplingConfig(max_new_tokens=args.tokens)

    started = time.perf_counter()
    rows = run_conversations(spec, work / "inputs.parquet", backend, sampling, sampling, sampling, args.turns, work / "genpi")
    ours_s = time.perf_counter() - started
    targets = read_table(work / "genpi" / "targets.parquet", TargetsSchema)
    # tokens: count what was generated, from the decoded texts (the loop below counts the same way)
    tok = backend.tokenizer
    messages = read_table(work / "genpi" / "messages.parquet", MessagesSchema)
    env_msgs = messages[messages["role"] == "environment"]
    count = lambda s: len(tok(s, add_special_tokens=False).input_ids) + 1  # noqa: E731  (+1: the end-of-turn token)
    ours_tokens = int(sum(map(count, targets["teacher_output"])) + sum(map(count, targets["base_output"]))
                      + sum(map(count, env_msgs["content"])))

    base_s, base_tokens = research_loop(spec, backend, texts[: args.baseline_n], args.turns, args.tokens)
    ours_rate, base_rate = ours_tokens / ours_s, base_tokens / base_s
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU",
        "model": "embedded SmolLM2-135M-Instruct (fp32)",
        "prompt": "examples/prompts/library_desk.yaml (1,522 prompt tokens)",
        "settings": vars(args),
        "startup_seconds": round(startup, 1),
        "genpi": {"conversations": args.n, "seconds": round(ours_s, 1), "tokens": ours_tokens, "tokens_per_s": round(ours_rate, 1),
                  "agent_turns": rows["agent_turns"]},
        "research_loop": {"conversations": args.baseline_n, "seconds": round(base_s, 1), "tokens": base_tokens,
                          "tokens_per_s": round(base_rate, 1)},
        "speedup": round(ours_rate / base_rate, 2),
        "note": "ours counts tokens of kept turns (quarantined turns are not counted), so the ratio is conservative",
    }
    print(json.dumps(result, indent=2))
    print(f"speed-up, tokens/s: {result['speedup']}x")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthesis.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "synthesis.md").write_text(
        "# Synthesis throughput (transformers backend, CPU)\n\n"
        f"{result['machine']}; {result['model']}; {result['prompt']}; {args.turns} agent turns, {args.tokens} new tokens max, greedy.\n\n"
        "| path | conversations | seconds | generated tokens | tokens/s |\n|---|---|---|---|---|\n"
        f"| research-code loop (batch size 1) | {args.baseline_n} | {base_s:.1f} | {base_tokens} | {base_rate:.1f} |\n"
        f"| genpi, batched per turn (batch {args.batch_size}, shared prefix) | {args.n} | {ours_s:.1f} | {ours_tokens} | {ours_rate:.1f} |\n\n"
        f"**Speed-up: {result['speedup']}x** tokens/s. Model start-up {startup:.1f} s, not counted.\n"
    )


if __name__ == "__main__":
    main()
