"""The stand-in's scheduler and generation: what its routes do with a request.

Timing imitates continuous batching (see the package docstring): :class:`Scheduler` is
vLLM's running/waiting split, and :class:`StandinEngine` paces each request's tokens.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engines.standin.config import StandinConfig
from engines.standin.faults import NO_FAULT, Fault
from engines.standin.hooks import Outcome, StandinHooks
from engines.standin.parsing import (
    batch,
    check_context,
    check_model,
    embedding_for,
    field_value,
    parse_generation,
    prompt_length,
)
from engines.standin.streams import (
    EventStream,
    drop_connection,
    unless_disconnected,
    wait_disconnect,
)
from engines.standin.wire import (
    CHAT,
    COMPLETION,
    DONE,
    ENGINE_ERROR,
    ApiError,
    Gen,
    Wire,
    error_body,
    json_response,
)

_TIMER_SLACK = 0.001  # uvloop timers have millisecond resolution


class Scheduler:
    """vLLM's running/waiting split: up to `max_num_seqs` run, the rest wait their turn."""

    def __init__(self, max_num_seqs: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.running = self.waiting = 0
        self._slots = asyncio.Semaphore(max_num_seqs)  # FIFO, and safe to cancel a waiter

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._slots.release()


class StandinEngine:
    """Serves the stand-in's endpoints; its public async methods are the routes."""

    def __init__(self, config: StandinConfig) -> None:
        self.config = config
        self.scheduler = Scheduler(config.max_num_seqs)
        self.hooks = StandinHooks(config.fault, config.seed, self._load)
        self.prompt_tokens = self.generation_tokens = 0
        self.successes = {"stop": 0, "length": 0}
        self._model = orjson.dumps(config.model)
        permission = (
            b'{"id":"modelperm-%s","object":"model_permission","created":%d,'
            b'"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,'
            b'"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,'
            b'"organization":"*","group":null,"is_blocking":false}'
        ) % (os.urandom(16).hex().encode(), int(time.time()))
        self._models = (
            b'{"object":"list","data":[{"id":%s,"object":"model","created":%d,"owned_by":"vllm",'
            b'"root":%s,"parent":null,"max_model_len":%d,"permission":[%s]}]}'
        ) % (self._model, int(time.time()), self._model, config.max_model_len, permission)

    def _load(self) -> dict[str, int]:
        return {"running": self.scheduler.running, "waiting": self.scheduler.waiting}

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        return json_response(self._models, {})

    async def metrics(self, request: Request) -> Response:
        return Response(self.metrics_text(), media_type="text/plain; version=0.0.4")

    async def chat(self, request: Request) -> Response:
        return await self._serve(request, CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, COMPLETION)

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, None)

    async def _serve(self, request: Request, wire: Wire | None) -> Response:
        """Serve chat or legacy completions (`wire`), or embeddings (`wire` is None)."""
        rid = request.headers.get("x-request-id")
        headers = {"x-request-id": rid} if rid else {}
        stats = self.hooks.stats
        stats.opened()
        outcome: Outcome | None = "completed"  # None: the stream settles it when it ends
        try:
            body = await self._read(request)
            gen = parse_generation(body, wire, self.config, rid) if wire else None
            embeddings = self._embed(body, rid) if gen is None else b""
            fault = self.hooks.faults.draw()
            stats.faults_injected += fault.mode != "none"
            if fault.mode in ("error_5xx", "hang", "close"):
                outcome, response = await self._fail(request, fault, headers)
                return response
            if gen is None:
                return json_response(embeddings, headers)
            if fault.mode == "trickle":
                outcome = None
                ended = lambda: stats.closed("completed" if gen.finished else "aborted")  # noqa: E731
                return self._trickle(gen, fault, headers, ended)
            if gen.stream:
                outcome = None
                ended = lambda: stats.closed("completed" if gen.finished else "aborted")  # noqa: E731
                return EventStream(self._generate(gen, fault), headers, ended)
            done = await unless_disconnected(request.receive, self._complete(gen, fault, headers))
            outcome = "aborted" if done is None else outcome
            return done or Response(status_code=499)
        except ApiError as exc:
            return exc.response(headers)
        finally:
            if outcome is not None:
                stats.closed(outcome)

    async def _read(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        headers = dict(request.headers)
        self.hooks.stats.last_request = dict(path=request.url.path, headers=headers, body=body)
        if not isinstance(body, dict):
            raise ApiError("JSON decode error: the body must be a JSON object")
        return body

    async def _fail(
        self, request: Request, fault: Fault, headers: Mapping[str, str]
    ) -> tuple[Outcome, Response]:
        """The faults that strike before generation: an error status, a hang, a drop."""
        if fault.mode == "error_5xx":
            phrase = HTTPStatus(fault.status).phrase
            kind = phrase.replace(" ", "").removesuffix("Error") + "Error"
            return "completed", json_response(
                error_body(phrase, kind, fault.status), headers, fault.status
            )
        if fault.mode == "close" and not drop_connection(request.scope):
            raise ConnectionAbortedError("the close fault needs uvicorn")
        await wait_disconnect(request.receive)
        return ("dropped" if fault.mode == "close" else "aborted"), Response(status_code=499)

    async def _generate(self, gen: Gen, fault: Fault) -> AsyncGenerator[bytes, None]:
        """Run `gen` through the scheduler; yield its SSE bytes (nothing unless streaming).

        Token k is due `ttft + (k - 1) * tpot` after admission. Overdue tokens go out in
        one write, and a non-streaming request sleeps once, until its last token.
        """
        role, token, final = gen.wire.frames(gen, self._model) if gen.stream else (b"",) * 3
        cut = fault.tokens_before_failing(gen.tokens)
        target = gen.tokens if cut is None else cut
        tpot, loop = self.config.tpot_ms / 1000, asyncio.get_running_loop()
        await self.scheduler.acquire()
        try:
            self.prompt_tokens += gen.prompt_tokens
            first = loop.time() + (self.config.ttft_ms + fault.extra_ttft_ms) / 1000
            while gen.emitted < target:
                step = gen.emitted + 1 if gen.stream else target
                if (delay := first + (step - 1) * tpot - loop.time()) > _TIMER_SLACK:
                    await asyncio.sleep(delay)
                late = loop.time() - first + _TIMER_SLACK
                due = target if tpot <= 0 else max(step, min(target, int(late / tpot) + 1))
                if gen.stream:
                    finishing = cut is None and due == gen.tokens
                    k_range = range(gen.emitted + 1, due if finishing else due + 1)
                    out = [role] if not gen.emitted else []
                    out += [token % (i, k) for k in k_range for i in range(gen.choices)]
                    yield b"".join(out) + (final if finishing else b"")
                gen.emitted = due
            if fault.mode == "stall_after":
                await asyncio.Future()  # until the client leaves and we are cancelled
            if cut is None:
                self.successes[gen.finish_reason] += 1
                usage = gen.include_usage and gen.wire.usage_chunk(gen, self.config.model)
                end = (usage or b"") + DONE
            else:
                end = b"data: " + ENGINE_ERROR + b"\n\n" + DONE
            if gen.stream:
                yield end
            gen.finished = True
        finally:
            self.scheduler.release()
            self.generation_tokens += gen.emitted * gen.choices

    def _trickle(
        self, gen: Gen, fault: Fault, headers: Mapping[str, str], ended: Callable[[], None]
    ) -> Response:
        """The whole answer, one byte every `fault.ms` (an engine that crawls)."""

        async def body() -> AsyncGenerator[bytes, None]:
            finished = gen.finished
            gen.finished = False
            chunks = [c async for c in self._generate(gen, NO_FAULT)]
            if not gen.stream:
                chunks = [gen.wire.full(gen, self._model)]
            done, gen.finished = gen.finished, finished
            for byte in b"".join(chunks):
                await asyncio.sleep(fault.ms / 1000)
                yield bytes((byte,))
            gen.finished = done

        response = EventStream(body(), headers, ended)
        if not gen.stream:
            response.media_type = "application/json"
            response.init_headers(headers)
        return response

    async def _complete(self, gen: Gen, fault: Fault, headers: Mapping[str, str]) -> Response:
        async for _ in self._generate(gen, fault):
            pass
        if fault.tokens_before_failing(gen.tokens) is not None:
            return json_response(ENGINE_ERROR, headers, 500)
        return json_response(gen.wire.full(gen, self._model), headers)

    def _embed(self, body: Mapping[str, Any], request_id: str | None) -> bytes:
        items = batch("input", body.get("input"))
        encoding = field_value(body, "encoding_format", str) or "float"
        if encoding not in ("float", "base64"):
            raise ApiError("encoding_format: Input should be 'float' or 'base64'")
        check_model(body, self.config.model)
        lengths = [prompt_length(item) for item in items]
        for length in lengths:
            check_context(length, None, self.config.max_model_len)
        data = []
        for index, item in enumerate(items):
            vector: Any = embedding_for(item, self.config.embedding_dim)
            if encoding == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append(dict(index=index, object="embedding", embedding=vector))
        tokens = sum(lengths)
        usage = dict(prompt_tokens=tokens, total_tokens=tokens, completion_tokens=0)
        return orjson.dumps(
            dict(
                id=f"embd-{request_id or os.urandom(16).hex()}",
                object="list",
                created=int(time.time()),
                model=self.config.model,
                data=data,
                usage=usage | {"prompt_tokens_details": None},
            )
        )

    def metrics_text(self) -> bytes:
        """Prometheus text with the gauges and counters a gateway reads from vLLM."""
        running, label = self.scheduler.running, f'model_name="{self.config.model}"'
        samples: dict[str, dict[str, float]] = {
            "gauge": {
                "num_requests_running": running,
                "num_requests_waiting": self.scheduler.waiting,
                "kv_cache_usage_perc": running / self.config.max_num_seqs,
            },
            "counter": {
                "prompt_tokens_total": self.prompt_tokens,
                "generation_tokens_total": self.generation_tokens,
            },
        }
        lines = []
        for kind, values in samples.items():
            for name, value in values.items():
                lines += [f"# TYPE vllm:{name} {kind}", f"vllm:{name}{{{label}}} {float(value)}"]
        lines.append("# TYPE vllm:request_success_total counter")
        for reason, count in self.successes.items():
            labels = f'finished_reason="{reason}",{label}'
            lines.append(f"vllm:request_success_total{{{labels}}} {float(count)}")
        return ("\n".join(lines) + "\n").encode()
