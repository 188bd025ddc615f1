"""Benchmark: teacher generation behind the long example prompt, three ways, same inputs, one run.

  hf-generate   transformers generate(), left-padded batch: the prompt is prefilled per conversation
  genpi-plain   our decoding loop with share_prefix off (plain batching: the loop itself costs nothing extra)
  genpi-shared  our decoding loop with shared-prefix attention (the default)
Also the no-prompt case (what the student pays) for reference. Prints seconds and ratios and
writes bench/results/prefix_sharing.json. Run: python bench/prefix_sharing.py [--n 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from genpi_core.generation.factory import make_backend
from genpi_core.ingest import load_spec
from genpi_core.prompt.views import user_turn, with_prompt, without_prompt
from schemas.config import BackendConfig, ModelConfig, SamplingConfig

ROOT = Path(__file__).resolve().parents[1]


def _hf_generate(backend, conversations, max_new_tokens: int) -> tuple[float, list[str]]:
    tok = backend.tokenizer
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    started = time.perf_counter()
    with torch.no_grad():
        out = backend.model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    seconds = time.perf_counter() - started
    return seconds, [tok.decode(o[enc.input_ids.shape[1] :], skip_special_tokens=True).strip() for o in out]


def _ours(backend, conversations, sampling, share: bool) -> tuple[float, list[str]]:
    backend.share_prefix = share
    started = time.perf_counter()
    out = backend.generate(conversations, sampling)
    return time.perf_counter() - started, [c.text for c in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="conversations (one batch)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    args = parser.parse_args()
    spec = load_spec(ROOT / "examples" / "prompts" / "library_desk.yaml")
    backend = make_backend(ModelConfig(), BackendConfig(batch_size=args.n))
    questions = [e.text for e in spec.inputs.eval][: args.n]
    teacher = [with_prompt(spec.prompt, user_turn(q)) for q in questions]
    sampling = SamplingConfig(max_new_tokens=args.tokens)
    _ours(backend, [user_turn("warm up")], SamplingConfig(max_new_tokens=4), True)

    rows = {}
    rows["hf-generate"], reference = _hf_generate(backend, teacher, args.tokens)
    rows["genpi-plain"], plain_texts = _ours(backend, teacher, sampling, share=False)
    rows["genpi-shared"], shared_texts = _ours(backend, teacher, sampling, share=True)
    rows["no-prompt (hf-generate)"], _ = _hf_generate(
        backend, [without_prompt(user_turn(q)) for q in questions], args.tokens
    )
    rows["no-prompt (genpi)"], _ = _ours(
        backend, [without_prompt(user_turn(q)) for q in questions], sampling, share=True
    )
    prompt_tokens = len(backend.encode(teacher[0])) - len(backend.encode(without_prompt(user_turn(questions[0]))))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "conversations": args.n,
        "new_tokens": args.tokens,
        "prompt_tokens": prompt_tokens,
        "seconds": {k: round(v, 2) for k, v in rows.items()},
        "speedup_shared_vs_hf_generate": round(rows["hf-generate"] / rows["genpi-shared"], 2),
        "identical_replies_shared_vs_hf": sum(a == b for a, b in zip(shared_texts, reference)),
        "identical_replies_plain_vs_hf": sum(a == b for a, b in zip(plain_texts, reference)),
    }
    for name, seconds in rows.items():
        print(f"{name:26s} {seconds:7.1f} s   x{rows['hf-generate'] / seconds:5.2f} vs hf-generate")
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / "prefix_sharing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
