#!/usr/bin/env bash
# Change -> traffic latency through the real apiserver, `ferrogate
# controller` and one `ferrogate dataplane` (100 new routes each, with 10
# and with 5,000 other routes present), and controller RSS at 5,000 routes.
# Needs root (a network namespace for the upstream), `ip`, and the apiserver
# tools (scripts/test-deps.sh). Release build. Usage: bench/controller.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# controller bench — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
cargo test --quiet --release --test controller_bench -- --ignored --nocapture --test-threads=1 \
  change_to_traffic_latency_and_controller_memory 2>&1 | grep -E '^(\||controller RSS|4,990|test result|Error|error)'
