"""Build the tiny random-init causal LM in ``tests/assets/tiny-causal-lm/`` that the fast mechanics tests use.

Why it exists: behaviour (what the adapter learns, what generation returns) is tested on the real embedded
model (SmolLM2-135M-Instruct). Mechanics (label masking, the chunked loss, which weights LoRA moves,
merging, resume) do not need a trained model, only the same architecture and the same tokenizer, so those
tests run on this 2-layer Llama with hidden size 64 in well under a second per step on a CPU.

What it is: ``LlamaForCausalLM`` with 2 layers, hidden 64, 4 attention heads, 2 KV heads, intermediate 128,
randomly initialised from a fixed seed, fp32 safetensors, input and output embeddings tied (stored once).
The tokenizer (and so the vocabulary, the special tokens and the chat template) is the embedded model's,
so ``encode_example`` and ``chat_token_ids`` behave exactly as in training. ``tokenizer.json`` is written
without indentation to keep the committed folder small; its content is unchanged.

Regenerate (offline; the embedded model must already be converted, e.g. by any test run or `genpi` run):

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_tiny_model.py

The output is deterministic for a given torch/transformers version; commit the folder it writes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "tests" / "assets" / "tiny-causal-lm"
SEED = 0

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))


def build(target: Path = TARGET, seed: int = SEED) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from genpi_core.generation.models import load_tokenizer, resolve_model

    embedded = resolve_model("embedded")  # local folder of the converted SmolLM2-135M-Instruct; no network
    tokenizer = load_tokenizer(embedded)
    source = json.loads((Path(embedded) / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=source.get("bos_token_id", tokenizer.bos_token_id),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tokenizer_json = tmp / "tokenizer.json"
    if tokenizer_json.is_file():  # same content, no indentation: ~1/3 smaller
        tokenizer_json.write_text(
            json.dumps(json.loads(tokenizer_json.read_text()), ensure_ascii=False, separators=(",", ":"))
        )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TARGET, help=f"output folder (default {TARGET.relative_to(ROOT)})")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    out = build(args.out, args.seed)
    files = sorted(p for p in out.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"{p.stat().st_size:>12,}  {p.name}")
    print(f"{total:>12,}  total in {out}")


if __name__ == "__main__":
    main()
