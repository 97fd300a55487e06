#!/usr/bin/env bash
# Create (or reuse) the gateway's virtualenv from the hash-pinned lock file.
# The venv lives in the cache, keyed by the lock's hash, and .venv links to it.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}"
PY="${PYTHON:-python3}"
UV_VERSION="0.13.9"
key="$( (cat requirements.lock; "$PY" --version; echo "uv=$UV_VERSION") | sha256sum | cut -c1-16)"
venv="$CACHE/gateway-venv/$key"

started=$(date +%s)
if [ ! -f "$venv/.tollgate-ready" ]; then
  echo "==> creating the gateway virtualenv ($venv)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
  "$venv/bin/uv" pip sync -q --python "$venv/bin/python" --require-hashes requirements.lock
  touch "$venv/.tollgate-ready"
fi
# The project itself, editable, without touching the pinned dependencies.
"$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps -e .
if [ -L .venv ] || [ ! -e .venv ]; then
  ln -sfn "$venv" .venv
fi
echo "==> gateway virtualenv ready in $(( $(date +%s) - started ))s: .venv -> $venv"
