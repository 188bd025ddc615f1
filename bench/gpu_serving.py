"""The serving claim at GPU scale: the teacher with its prompt vs the internalized student, at Llama-3-8B shape.

A prepared check for a GPU machine with torch + transformers + peft (no vLLM, no weights: random init of the
real shape, bf16; speed and memory do not depend on the values). Per prompt length (1k, 4k tokens) and batch
(1, 16), with a fixed decode length that ignores EOS:
  teacher_prefill   prompt + input prefilled on every request, then decode
  teacher_prefix    the prompt's KV computed once and reused (copied per batch): only the input prefilled
  student_unmerged  base + a rank-16 LoRA on every projection (peft), input only
  student_merged    the adapter folded into the weights (the base's shape and speed), input only
Reported: latency per request batch (median of the repeats) and peak GPU memory per variant, and the ratios the
seed paper claims (student vs teacher: 37% lower latency, 42% less GPU memory).

    python bench/gpu_serving.py                 # Llama-3-8B shape on CUDA; results bench/results/gpu_serving.json
    python bench/gpu_serving.py --shape tiny    # a smoke run of the same code on CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHAPES = {
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        max_position_embeddings=8192,
    ),
}
INPUT_TOKENS = 32
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _model(shape: str, device: str, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def _generate(model, ids: torch.Tensor, new_tokens: int, cache=None) -> None:
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        past_key_values=cache,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # a fixed decode length: EOS never ends a reply early
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )


def _measure(run, device: str, repeats: int) -> dict:
    run()  # warm-up (kernels, allocator)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"latency_s": statistics.median(times), "peak_gib": peak}


@torch.no_grad()
def run(shape: str, device: str, lengths: list[int], batches: list[int], new_tokens: int, repeats: int) -> list[dict]:
    from peft import LoraConfig, get_peft_model
    from transformers import DynamicCache

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base = _model(shape, device, dtype)
    vocab = base.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length in lengths:
        prompt = torch.randint(10, vocab, (1, length), generator=generator).to(device)
        prefix = DynamicCache(config=base.config)
        base(input_ids=prompt, past_key_values=prefix, use_cache=True)  # the prompt's KV, once
        for batch in batches:
            inputs = torch.randint(10, vocab, (batch, INPUT_TOKENS), generator=generator).to(device)
            full = torch.cat([prompt.expand(batch, -1), inputs], dim=1)

            def reused(full=full, batch=batch, prefix=prefix):
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(batch)
                _generate(base, full, new_tokens, cache)

            cases = {
                "teacher_prefill": lambda full=full: _generate(base, full, new_tokens),
                "teacher_prefix": reused,
                "student_merged": lambda inputs=inputs: _generate(base, inputs, new_tokens),
            }
            for name, fn in cases.items():
                rows.append({"variant": name, "prompt_tokens": length, "batch": batch} | _measure(fn, device, repeats))
    del prefix  # the teacher's prompt KV must not count against the student's memory
    if device == "cuda":
        torch.cuda.empty_cache()
    student = get_peft_model(
        base, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    ).eval()
    for name, p in student.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    for length in lengths:  # the student never sees the prompt: its numbers do not depend on the length
        for batch in batches:
            inputs = torch.randint(10, vocab, (batch, INPUT_TOKENS), generator=generator).to(device)
            row = _measure(lambda inputs=inputs: _generate(student, inputs, new_tokens), device, repeats)
            rows.append({"variant": "student_unmerged", "prompt_tokens": length, "batch": batch} | row)
    return rows


def ratios(rows: list[dict]) -> dict:
    by = {(r["variant"], r["prompt_tokens"], r["batch"]): r for r in rows}
    out = {}
    for (variant, length, batch), row in by.items():
        if variant != "teacher_prefill":
            continue
        for other in ("teacher_prefix", "student_merged", "student_unmerged"):
            o = by.get((other, length, batch))
            if not o:
                continue
            key = f"{length}_b{batch}_{other}"
            out[f"{key}_latency_reduction"] = 1 - o["latency_s"] / row["latency_s"]
            if row["peak_gib"] and o["peak_gib"]:
                out[f"{key}_memory_reduction"] = 1 - o["peak_gib"] / row["peak_gib"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="bench/results/<out>.json (default gpu_serving, or _smoke)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.shape == "llama3-8b" and device != "cuda":
        raise SystemExit("--shape llama3-8b needs a CUDA GPU (16 GB of bf16 weights); use --shape tiny here")
    started = time.perf_counter()
    rows = run(
        args.shape,
        device,
        [int(x) for x in args.lengths.split(",")],
        [int(x) for x in args.batches.split(",")],
        args.new_tokens,
        args.repeats,
    )
    results = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": "bfloat16" if device == "cuda" else "float32",
        "new_tokens": args.new_tokens,
        "input_tokens": INPUT_TOKENS,
        "rows": rows,
        "ratios": ratios(rows),
        "paper_claims": {"latency_reduction": 0.37, "memory_reduction": 0.42},
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = args.out or ("gpu_serving" if args.shape == "llama3-8b" else "gpu_serving_smoke")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ratios"], indent=2))


if __name__ == "__main__":
    main()
