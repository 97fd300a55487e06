"""Parse vLLM server argv lists with vLLM's own argument parser, without starting anything.

Run by the engine venv's interpreter: ``python check_vllm_args.py FILE`` where FILE holds
``{"name": ["--model", "...", ...], ...}``. Prints ``{"name": null | "error", ...}`` as
JSON on the last line of stdout: null when vLLM would accept the argv.

Each argv goes through what ``python -m vllm.entrypoints.openai.api_server`` does before
it loads a model: ``make_arg_parser`` (unknown flags, bad types, bad choices),
``validate_parsed_serve_args`` and the server's tool-call and reasoning parser check.
vLLM 0.32 accepts any ``--quantization`` string at parse time and fails only once the
model is loading, so the name is checked here against its registry of quantization
methods. (``AsyncEngineArgs.from_cli_args`` is not called: it already looks the model
up on the Hub.)
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any


def check(argv: list[str]) -> str | None:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.launchers.launcher import validate_api_server_args
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm-api-server"))
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args: Any = parser.parse_args(argv)
    except SystemExit:
        lines = [line for line in errors.getvalue().splitlines() if "error:" in line]
        return lines[-1].split("error:", 1)[1].strip() if lines else errors.getvalue()[-500:]
    try:
        validate_parsed_serve_args(args)
        validate_api_server_args(args)
        if args.quantization is not None and args.quantization not in QUANTIZATION_METHODS:
            known = ", ".join(sorted(QUANTIZATION_METHODS))
            return f"unknown --quantization {args.quantization!r} (known: {known})"
    except Exception as exc:  # vLLM raises TypeError, ValueError, KeyError...
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as handle:
        argvs: dict[str, list[str]] = json.load(handle)
    results = {name: check([str(a) for a in argv]) for name, argv in argvs.items()}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
