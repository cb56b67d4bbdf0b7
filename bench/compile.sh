#!/usr/bin/env bash
# Times the compiler on 100, 1,000 and 10,000 generated routes (each with a
# Service and an EndpointSlice of 3 endpoints): median of 5 runs.
# Target: 10,000 routes in <= 250 ms. Usage: bench/compile.sh [sizes]
# e.g. bench/compile.sh 100,1000,10000,50000
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# compile bench — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
BENCH_SIZES="${1:-100,1000,10000}" cargo run --quiet --release -p snapshot --example bench_compile
