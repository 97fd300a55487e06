"""A 0 ms vLLM-shaped engine on raw asyncio and httptools, for throughput benchmarks.

``python -m bench.stub_engine --port 8001 [--tokens 16]``

It answers ``POST /v1/chat/completions`` at once, with vLLM's bytes: a
``chat.completion`` with usage, or (``"stream": true``) the role chunk, one chunk per
token, the finishing chunk, the usage chunk and ``data: [DONE]``, chunked. ``GET /health``,
``/v1/models`` and ``/metrics`` (the gauges a gateway scrapes) answer too. No request is
parsed beyond finding ``"stream": true``: the point is to cost as little CPU as possible,
so that a router in front of it, not the engine, is what runs out of core first.
``engines.standin`` is the faithful stand-in; it spends about ten times the CPU per
request (Starlette, a body parse, a scheduler).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

import httptools
import uvloop

MODEL = "standin-bench"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Replies:
    """The response bytes, built once per process (ids and timestamps are fixed)."""

    def __init__(self, tokens: int, prompt_tokens: int = 20) -> None:
        created = int(time.time())
        usage = (
            b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d,'
            b'"prompt_tokens_details":null}' % (prompt_tokens, prompt_tokens + tokens, tokens)
        )
        text = b" ".join(b"tok%d" % k for k in range(1, tokens + 1))
        body = (
            b'{"id":"chatcmpl-stub","object":"chat.completion","created":%d,"model":"%s",'
            b'"choices":[{"index":0,"message":{"role":"assistant","reasoning_content":null,'
            b'"content":"%s","tool_calls":[]},"logprobs":null,"finish_reason":"length",'
            b'"stop_reason":null}],"usage":%s,"prompt_logprobs":null}'
            % (created, MODEL.encode(), text, usage)
        )
        self.unary = _response(b"application/json", body)
        head = (
            b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":%d,'
            b'"model":"%s","choices":[' % (created, MODEL.encode())
        )
        tail = b'],"usage":null}\n\n'
        frames = [
            head + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            b'"finish_reason":null}' + tail
        ]
        for k in range(1, tokens):
            frames.append(
                head + b'{"index":0,"delta":{"content":" tok%d"},"logprobs":null,'
                b'"finish_reason":null}' % k + tail
            )
        frames.append(
            head + b'{"index":0,"delta":{"content":" tok%d"},"logprobs":null,'
            b'"finish_reason":"length","stop_reason":null}' % tokens + tail
        )
        frames.append(head + b'],"usage":%s}\n\n' % usage)
        frames.append(b"data: [DONE]\n\n")
        self.stream = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
            + b"".join(_chunk(f) for f in frames)
            + b"0\r\n\r\n"
        )
        self.health = _response(b"application/json", b"{}")
        self.models = _response(
            b"application/json",
            b'{"object":"list","data":[{"id":"%s","object":"model","owned_by":"vllm",'
            b'"max_model_len":8192}]}' % MODEL.encode(),
        )
        gauges = (b"num_requests_running", b"num_requests_waiting", b"kv_cache_usage_perc")
        self.metrics = _response(
            b"text/plain; version=0.0.4",
            b"".join(
                b'# TYPE vllm:%s gauge\nvllm:%s{model_name="%s"} 0.0\n' % (g, g, MODEL.encode())
                for g in gauges
            ),
        )
        self.not_found = _response(b"application/json", b'{"detail":"Not Found"}', 404)


def _response(kind: bytes, body: bytes, status: int = 200) -> bytes:
    reason = b"OK" if status == 200 else b"Not Found"
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        reason,
        kind,
        len(body),
        body,
    )


class StubProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order as they complete."""

    def __init__(self, replies: Replies) -> None:
        self._replies = replies
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._stream = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_headers_complete(self) -> None:
        self._stream = False

    def on_body(self, body: bytes) -> None:
        if b'"stream":true' in body or b'"stream": true' in body:
            self._stream = True

    def on_message_complete(self) -> None:
        r, url = self._replies, self._url
        if url.startswith(b"/v1/chat/completions"):
            reply = r.stream if self._stream else r.unary
        elif url.startswith(b"/health"):
            reply = r.health
        elif url.startswith(b"/v1/models"):
            reply = r.models
        elif url.startswith(b"/metrics"):
            reply = r.metrics
        else:
            reply = r.not_found
        assert self._transport is not None
        self._transport.write(reply)
        if not self._parser.should_keep_alive():
            self._transport.close()


async def serve(port: int, tokens: int) -> None:
    replies = Replies(tokens)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(lambda: StubProtocol(replies), sock=sock, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stub_engine", description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per answer")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.tokens))


if __name__ == "__main__":
    main()
