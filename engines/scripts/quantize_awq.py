"""AWQ W4A16 quantization of a Hugging Face folder with llmcompressor, on CPU.

Run by the quantization venv's interpreter:
``python quantize_awq.py --src BF16_DIR --out DIR --group-size 64 --samples 120``.
AWQ smoothing, then symmetric int4 group-wise weights on every ``Linear`` except
``lm_head``, saved in compressed-tensors format that vLLM loads directly. Calibration
texts are written here, so no dataset is downloaded.
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
    texts: list[str] = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        question = QUESTIONS[(i // len(TOPICS)) % len(QUESTIONS)].format(t=topic)
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


def quantize(src: Path, out: Path, group_size: int, samples: int, max_len: int, seed: int) -> None:
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    texts = calibration_texts(tokenizer, samples, seed)
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    print(f"calibration: {len(texts)} texts, {tokens} tokens", flush=True)
    # The preset W4A16 scheme uses group size 128, which does not divide SmolLM2's
    # hidden size 576; 64 divides both 576 and 1536.
    weights = QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size
    )
    recipe = [
        AWQModifier(),
        QuantizationModifier(
            ignore=["lm_head"],
            config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
        ),
    ]
    allow_cpu_only_torch()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=Dataset.from_dict({"text": texts}),
        recipe=recipe,
        max_seq_length=max_len,
        num_calibration_samples=samples,
        shuffle_calibration_samples=False,
    )
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
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    quantize(args.src, args.out, args.group_size, args.samples, args.max_seq_length, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
