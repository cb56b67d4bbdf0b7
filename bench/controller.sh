#!/usr/bin/env bash
# Change -> traffic latency through the real apiserver, `ferrogate
# controller` and one `ferrogate dataplane` (100 new routes each, with 10
# and with 5,000 other routes present), and controller RSS at 5,000 routes.
# The program is bench/controller.rs (a `[[bench]]` target, harness = false).
# Needs root (a network namespace for the upstream), `ip`, and the apiserver
# tools (scripts/test-deps.sh). Release build. Usage: bench/controller.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${FERROGATE_TOOLS_BIN:-}" ]; then
  FERROGATE_TOOLS_BIN="$(bash scripts/test-deps.sh | tail -n1)"
  export FERROGATE_TOOLS_BIN
  export PATH="$FERROGATE_TOOLS_BIN:$PATH"
fi
cargo bench --quiet --bench controller --no-run
echo "# controller bench — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --quiet --bench controller
