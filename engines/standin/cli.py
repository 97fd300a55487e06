"""`python -m engines.standin`: serve one stand-in engine with uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import socket

import uvicorn

from engines.standin.app import create_app
from engines.standin.config import DEFAULT_MODEL, StandinConfig
from engines.standin.faults import NO_FAULT, Fault


def _fault_arg(spec: str) -> Fault:
    try:
        return Fault.from_spec(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    """`python -m engines.standin`: serve one stand-in engine with uvicorn."""
    parser = argparse.ArgumentParser(
        prog="python -m engines.standin", description="vLLM stand-in engine"
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=8000)
    add("--fd", type=int, help=argparse.SUPPRESS)  # a listening socket from StandinProcess
    add("--model", default=DEFAULT_MODEL, help="the served model name")
    add("--max-model-len", type=int, default=2048)
    add("--ttft-ms", type=float, default=0.0, help="time to first token after admission")
    add("--tpot-ms", type=float, default=0.0, help="time per further output token")
    add("--max-num-seqs", type=int, default=256, help="requests running at once; others wait")
    add("--embeddings", action="store_true", help="serve POST /v1/embeddings")
    add("--embedding-dim", type=int, default=32)
    add("--fault", type=_fault_arg, default=NO_FAULT, help="e.g. error_5xx:503,count=3")
    add("--seed", type=int, help="seed for faults with a probability")
    add("--api-key", help="require this Bearer token on /v1 (like vLLM's --api-key)")
    add("--prompt-count", choices=["words", "bytes"], default="words", help="see the docstring")
    add("--log-level", default="warning")
    args = vars(parser.parse_args(argv))
    names = {f.name for f in dataclasses.fields(StandinConfig)}
    app = create_app(StandinConfig(**{k: v for k, v in args.items() if k in names}))
    config = uvicorn.Config(
        app,
        host=args["host"],
        port=args["port"],
        loop="uvloop",
        http="httptools",
        access_log=False,
        lifespan="off",
        log_level=args["log_level"],
        timeout_graceful_shutdown=1,
    )
    sockets = None if args["fd"] is None else [socket.socket(fileno=args["fd"])]
    uvicorn.Server(config).run(sockets=sockets)
