"""A cheap stand-in for a vLLM engine that speaks vLLM's OpenAI-server wire format.

The gateway's fast tests, fault-injection tests and benchmarks run against it instead of
the real (slow, CPU) vLLM. It is a plain Starlette app with orjson, byte templates for
responses and stream chunks, and no task per token.

Endpoints: `GET /health`, `/metrics`, `/v1/models`; `POST /v1/chat/completions`,
`/v1/completions`, and `/v1/embeddings` (only with `--embeddings`). The test hooks
under `/_standin/` are described in `engines.standin.hooks`, the fault modes in
`engines.standin.faults`.

Token accounting is deterministic, so tests can compute the expected usage:
prompt tokens are `count_prompt_tokens(body)` (with `--prompt-count bytes`, every byte its
own token: more than any real tokenizer counts, for budget tests); each choice generates
`max_completion_tokens` or `max_tokens` tokens when given (finish_reason "length"), else
16 (finish_reason "stop", as if the model emitted EOS), unless a `stop` string matches
first (finish_reason "stop", stop_reason the string). The text is " tok1 tok2 ... tokN".

Timing imitates continuous batching: up to `max_num_seqs` requests run and the rest
wait in FIFO order (both visible in `/metrics`). A running request yields its first
token `ttft_ms` after admission, then one every `tpot_ms`; a non-streaming response
arrives when all are done. A client that disconnects aborts its request: generation
stops and `/_standin/stats` counts it.

vLLM habits kept on purpose: ids are `chatcmpl-`/`cmpl-`/`embd-` + the X-Request-ID
header when sent (which is echoed); `stream_options.include_usage` puts `"usage":null`
on every chunk and adds a `"choices":[]` usage chunk; the last token's chunk carries the
finish_reason; errors are `{"error": {message, type, param, code}}`, typed "Bad Request"
(malformed body), "BadRequestError" (semantic) or "NotFoundError" (unknown model); an
error after streaming began is an error frame followed by `data: [DONE]`.

Run: `python -m engines.standin --port 8001 --model small --ttft-ms 40 --tpot-ms 8`.
Tests: `with run_standin(model="small") as base_url: ...`, or `StandinProcess` to stop
(the port then refuses connections) and restart (both in `engines.standin.process`).

Modules, by concern:

    config.py    StandinConfig and the token-accounting constants
    wire.py      vLLM's wire formats: byte templates, error shapes, the generation record
    parsing.py   request bodies → a planned generation; prompt counting; embeddings
    engine.py    the scheduler and generation (StandinEngine, whose methods are the routes)
    app.py       the ASGI app: routes, --api-key, HTTP errors (create_app)
    cli.py       `python -m engines.standin` (main)
    faults.py    the fault model (Fault, FaultInjector)
    hooks.py     the `/_standin/*` routes and their stats
    streams.py   client disconnects, dropped connections, the SSE response
    process.py   the stand-in in a child process (StandinProcess, run_standin)
"""
