"""AWQ 4-bit quantization of a Hugging Face folder with llmcompressor, on CPU.

Run by the quantization venv's interpreter:
``python quantize_awq.py --src BF16_DIR --out DIR --scheme w4a16 --group-size 64 ...``.
AWQ smoothing, then symmetric int4 group-wise weights on every ``Linear`` except
``lm_head`` (``w4a8`` also quantizes activations to int8 per token at run time), saved
in compressed-tensors format that vLLM loads directly. Calibration texts are written
here, so no dataset is downloaded. The cost is one forward pass of the calibration
tokens per point of the scale grid, per layer: ``--samples`` and ``--n-grid`` set it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

# fmt: off
TOPICS = (
    "the water cycle", "photosynthesis", "the French Revolution", "prime numbers",
    "how vaccines work", "black holes", "the stock market", "machine learning",
    "the Roman Empire", "climate change", "the human heart", "plate tectonics",
    "the internet", "renewable energy", "the Moon landing", "DNA", "volcanoes",
    "the printing press", "gravity", "coffee", "honeybees", "the Pythagorean theorem",
    "electric cars", "the Great Wall of China", "sleep", "recycling", "rainbows",
    "the Olympic Games", "chess", "bread baking",
)
# fmt: on
QUESTIONS = (
    "Explain {t} in two sentences.",
    "What is the most surprising fact about {t}?",
    "Write a short paragraph for a child about {t}.",
    "Give me three key points about {t}.",
)
ANSWERS = (
    "Sure. {T} is a topic many people find interesting. In short, it shows how simple "
    "rules can lead to complex and useful results in everyday life.",
    "Here is a short overview of {t}: it has a long history, it affects many people, "
    "and scientists keep learning new things about it every year.",
    "{T} can be summarised in three points. First, it has clear causes. Second, it has "
    "measurable effects. Third, understanding it helps us make better decisions.",
)


def calibration_texts(tokenizer: object, count: int, seed: int) -> list[str]:
    """``count`` short chat-formatted conversations, deterministic for a given seed."""
    rng = random.Random(seed)
    # Every (topic, question) pair once, shuffled, so a small sample still spans every
    # question form rather than the first one only.
    pairs = [(t, q) for q in QUESTIONS for t in TOPICS]
    rng.shuffle(pairs)
    texts: list[str] = []
    for i in range(count):
        topic, form = pairs[i % len(pairs)]
        question = form.format(t=topic)
        answer = rng.choice(ANSWERS).format(t=topic, T=topic[0].upper() + topic[1:])
        messages = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)  # type: ignore[attr-defined]
        texts.append(str(text))
    return texts


def allow_cpu_only_torch() -> None:
    """Make llmcompressor's intermediates-cache pin step a no-op without an accelerator.

    Pinning host memory only speeds up host-to-device copies; on CPU-only torch it raises
    "Cannot access accelerator device when none is available".
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        return

    def no_pin(self: object, batch_index: int, input_names: list[str] | None = None) -> None:
        return None

    IntermediatesCache.pin_memory = no_pin


def quantize(args: argparse.Namespace) -> None:
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out, samples = args.src, args.out, args.samples
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(src)
    # Calibrate in bf16 where the CPU computes it natively (AVX512-BF16 or AMX), else in
    # float32: torch emulates bf16 there, several times slower (see
    # bench/results/awq_prepare.md). The saved checkpoint is bf16 either way.
    name = args.dtype
    if name == "auto":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        name = "bfloat16" if native else "float32"
    dtype = getattr(torch, name)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    texts = calibration_texts(tokenizer, samples, args.seed)
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    print(
        f"calibration: {len(texts)} texts, {tokens} tokens, {args.scheme}, {name}, "
        f"n_grid={args.n_grid}, duo_scaling={args.duo_scaling}, "
        f"threads={torch.get_num_threads()}",
        flush=True,
    )
    # The preset W4A16 scheme uses group size 128, which does not divide SmolLM2's
    # hidden size 576; 64 divides both 576 and 1536.
    weights = QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=args.group_size
    )
    # w4a8: the same int4 weights, with activations quantized to int8 per token at run
    # time. vLLM-CPU runs it through torch's _dyn_quant_matmul_4bit, which every x86
    # build has; W4A16's cpu_gemm_wna16 exists only in the AVX-512 kernel libraries.
    activations = (
        QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        if args.scheme == "w4a8"
        else None
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=activations)
    duo: bool | str = "both" if args.duo_scaling == "both" else args.duo_scaling == "on"
    recipe = [
        AWQModifier(n_grid=args.n_grid, duo_scaling=duo),
        QuantizationModifier(ignore=["lm_head"], config_groups={"group_0": scheme}),
    ]
    allow_cpu_only_torch()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=Dataset.from_dict({"text": texts}),
        recipe=recipe,
        max_seq_length=args.max_seq_length,
        num_calibration_samples=samples,
        shuffle_calibration_samples=False,
    )
    calibrated = time.monotonic()
    print(f"calibrated in {calibrated - started:.0f}s", flush=True)
    if dtype != torch.bfloat16:
        model.to(torch.bfloat16)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    print(f"wrote {out} in {time.monotonic() - started:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheme", choices=("w4a16", "w4a8"), default="w4a16")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    parser.add_argument("--n-grid", type=int, default=20, help="AWQ scale search points")
    parser.add_argument("--duo-scaling", choices=("on", "off", "both"), default="on")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    quantize(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
