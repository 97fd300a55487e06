"""The prompt bound admission reserves is never below a real tokenizer's count."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import tiktoken
from jinja2 import Environment
from tokenizers import Tokenizer

from gateway.prompt_bound import BOUND_PER_MESSAGE, BOUND_PER_PROMPT, ByteBound, TemplateCount
from gateway.protocol import Endpoint, ParsedRequest, parse_request
from gateway.tokens import TIKTOKEN_ENCODING, TokenCounter

SMOLLM2 = Path.home() / ".cache/tollgate/models/smollm2-135m-instruct-bf16-v1"

#: Pieces the generator mixes: scripts with 2-4 byte characters, emoji (ZWJ sequences,
#: flags, skin tones), combining marks, code, whitespace runs, digits, lone specials.
PIECES = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Привет, как дела?",
    "日本語のテキストを数えます。",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "한국어 문장입니다",
    "ελληνικά",
    "👩‍👩‍👧‍👦",
    "🇫🇷🇯🇵",
    "👍🏽🔥💯",
    "e\u0301 a\u0308 n\u0303",
    "def f(x):\n    return x ** 2  # squared\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "    \t\t   \n\n\n",
    "1234567890 3.14159 -42",
    "<|endoftext|>",
    "<|im_start|>",
    "\u200b\u200d\ufeff",
    "\U0001d518\U0001d52b\U0001d526 \U0001d544\U0001d552",  # math letters, 4 bytes
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]
ROLES = ["system", "user", "assistant", "user", "assistant", "user"]


def texts(rng: random.Random) -> str:
    return "".join(
        rng.choice(PIECES) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(0, 8))
    )


def conversations(seed: int, count: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        start = rng.randint(0, 1)  # with or without a system message
        n = rng.randint(1, 5)
        out.append([{"role": ROLES[start + i], "content": texts(rng)} for i in range(n)])
    return out


def chat(messages: list[dict[str, Any]], **extra: Any) -> ParsedRequest:
    body = orjson.dumps({"model": "m", "messages": messages, **extra})
    return parse_request(Endpoint.CHAT, body, max_messages=100, max_n=4)


#: ChatML, with cl100k's own special tokens as its markers and a default system prompt
#: of SmolLM2's length: what an engine serving a cl100k model could render.
CL100K_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|fim_prefix|>system\n"
    "You are a helpful AI assistant named Tollgate, deployed behind a gateway.<|fim_suffix|>\n"
    "{% endif %}{% for m in messages %}<|fim_prefix|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|fim_suffix|>\n{% endfor %}<|fim_prefix|>assistant\n"
)


def test_the_byte_bound_covers_cl100k_on_varied_texts() -> None:
    enc = tiktoken.get_encoding(TIKTOKEN_ENCODING)
    template = Environment().from_string(CL100K_TEMPLATE)
    bound = ByteBound()
    for messages in conversations(seed=13, count=400):
        rendered = template.render(messages=messages)
        truth = len(enc.encode(rendered, allowed_special="all"))
        upper = bound.count(chat(messages)).upper
        assert upper >= truth, (messages, upper, truth)
    # Not vacuous: some texts come close to one token per byte.
    per_byte = max(len(enc.encode(p, allowed_special="all")) / len(p.encode()) for p in PIECES)
    assert per_byte > 0.6


def test_a_prompt_of_one_token_per_byte_is_still_covered() -> None:
    """The worst case a byte-level tokenizer can reach: every byte its own token."""
    worst = "".join(chr(c) for c in range(0x4E00, 0x4E40))  # 64 CJK characters, 192 bytes
    messages = [{"role": "user", "content": worst}]
    # The engine may count each byte of the content and role, plus its markers.
    engine = len(worst.encode()) + len(b"user") + BOUND_PER_MESSAGE + BOUND_PER_PROMPT
    assert ByteBound().count(chat(messages)).upper >= engine


def smollm2() -> Path:
    if not (SMOLLM2 / "tokenizer.json").is_file():
        pytest.fail(
            f"SmolLM2's tokenizer is not at {SMOLLM2}: prepare the engine's model cache "
            "(python -m engines prepare) to run this test"
        )
    return SMOLLM2


def smollm2_truth(directory: Path) -> Any:
    """What vLLM counts: SmolLM2's template rendered (plain jinja2), tokenized whole (the
    gateway's count was checked against transformers' apply_chat_template too)."""
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string((directory / "chat_template.jinja").read_text())
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))

    def count(messages: list[dict[str, str]]) -> int:
        text = template.render(messages=messages, add_generation_prompt=True)
        return len(tok.encode(text).ids)

    return count


def test_smollm2_counts_exactly_and_its_bounds_hold() -> None:
    directory = smollm2()
    counter = TokenCounter({"m": str(directory), "plain": None})
    exact = counter.bound_for("m")
    assert isinstance(exact, TemplateCount)
    assert counter.describe_bounds() == {
        "m": f"exact: tokenizer {directory} + chat template (else {exact.fallback.describe()})",
        "plain": "bound: utf-8 bytes + 8 per message + 128 per prompt",
    }
    truth_of = smollm2_truth(directory)
    for messages in conversations(seed=7, count=150):
        req = chat(messages)
        truth = truth_of(messages)
        assert counter.prompt_bound(["m"], req) == (truth, truth), messages
        # No tokenizer configured: the byte bound; the template's own fallback too.
        assert counter.prompt_bound(["plain"], req).upper >= truth, messages
        assert exact.fallback.count(req).upper >= truth, messages
        # Several reachable models: the highest upper, the lowest lower.
        both = counter.prompt_bound(["m", "plain"], req)
        assert both.upper == counter.prompt_bound(["plain"], req).upper
        assert both.lower == 0


def test_smollm2_requests_it_cannot_render_take_the_byte_bound() -> None:
    counter = TokenCounter({"m": str(smollm2())})
    parts = [{"role": "user", "content": [{"type": "text", "text": "héllo 👋"}]}]
    own = [{"role": "user", "content": "hi"}]
    for req in (chat(parts), chat(own, chat_template="{{ messages }}")):
        count = counter.prompt_bound(["m"], req)
        assert count.lower == 0
        assert count.upper >= BOUND_PER_PROMPT + len("héllo 👋".encode())


def test_completions_and_embeddings() -> None:
    def req(endpoint: Endpoint, **body: Any) -> ParsedRequest:
        return parse_request(
            endpoint, orjson.dumps({"model": "m", **body}), max_messages=100, max_n=4
        )

    bound = ByteBound()
    assert bound.count(req(Endpoint.COMPLETIONS, prompt="héllo")) == (6 + 2, 0)
    assert bound.count(req(Endpoint.COMPLETIONS, prompt=[1, 2, 3])) == (3, 3)  # ids: exact
    assert bound.count(req(Endpoint.EMBEDDINGS, input=["ab", "ç"])) == (4 + 4, 0)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with_tools = bound.count(chat([{"role": "user", "content": "x"}], tools=tools)).upper
    assert with_tools > bound.count(chat([{"role": "user", "content": "x"}])).upper + 512
