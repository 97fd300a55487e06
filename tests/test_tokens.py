"""Token counting for admission: the chat template's overhead is measured, not guessed."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from gateway.protocol import Endpoint, parse_request
from gateway.tokens import PER_MESSAGE_OVERHEAD, PER_PROMPT_OVERHEAD, ChatOverhead, TokenCounter

WORDS = "<s> </s> [ ] : system user assistant you are a long winded helper hello hi there bye ok"
#: A template that adds a 6-word system prompt when none is given, and 4 tokens per message.
TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<s> [ system ] you are a long winded helper </s>"
    "{% endif %}{% for m in messages %}<s> [ {{ m['role'] }} ] {{ m['content'] }} </s>"
    "{% endfor %}{% if add_generation_prompt %}<s> [ assistant ]{% endif %}"
)


def model_dir(tmp_path: Path, template: str | None, *, separate_file: bool = False) -> Path:
    vocab = {w: i for i, w in enumerate(["[UNK]", *WORDS.split()])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg: dict[str, object] = {"bos_token": "<s>", "eos_token": "</s>"}
    if template is not None and separate_file:
        (tmp_path / "chat_template.jinja").write_text(template)
    elif template is not None:
        cfg["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp_path


def exact(tmp_path: Path, messages: list[dict[str, str]]) -> int:
    """What an engine would count: the rendered template, tokenized."""
    from jinja2 import Environment

    text = Environment().from_string(TEMPLATE).render(messages=messages, add_generation_prompt=True)
    return len(Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids)


def chat(messages: list[dict[str, str]]) -> object:
    body = orjson.dumps({"model": "m", "messages": messages})
    return parse_request(Endpoint.CHAT, body, max_messages=100, max_n=4)


CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "ok"}, {"role": "user", "content": "hello hello hi"}],
    [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hi there ok"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "bye bye"},
        {"role": "user", "content": "ok ok ok ok"},
    ],
]


@pytest.mark.parametrize("separate_file", [False, True])
def test_the_estimate_covers_what_the_template_adds(tmp_path: Path, separate_file: bool) -> None:
    counter = TokenCounter({"m": str(model_dir(tmp_path, TEMPLATE, separate_file=separate_file))})
    overhead = counter.chat_overhead("m")
    assert overhead.per_prompt > PER_PROMPT_OVERHEAD  # the default system prompt is seen
    for messages in CONVERSATIONS:
        estimate = counter.count_prompt("m", chat(messages))  # type: ignore[arg-type]
        truth = exact(tmp_path, messages)
        assert estimate >= truth, (messages, estimate, truth)  # a worst case, always
        # and close, with or without the template's default system prompt
        assert estimate <= truth + 2 + 2 * len(messages), (messages, estimate, truth)
    assert overhead.per_prompt_system is not None
    assert overhead.per_prompt - overhead.per_prompt_system >= 9  # its 9-word prompt


def test_defaults_without_a_template_or_with_one_that_fails(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = TokenCounter({"m": str(model_dir(tmp_path / "a", None))})
    assert plain.chat_overhead("m") == ChatOverhead(PER_PROMPT_OVERHEAD, PER_MESSAGE_OVERHEAD)
    assert plain.chat_overhead("m").per_prompt_system is None
    broken = "{{ raise_exception('this template needs a system message') }}"
    failing = TokenCounter({"m": str(model_dir(tmp_path / "b", broken))})
    assert failing.chat_overhead("m") == ChatOverhead()
    assert TokenCounter({}).chat_overhead("unknown") == ChatOverhead()
