#!/usr/bin/env bash
# The release build, optimized with a profile of Ferrogate's own traffic
# (profile-guided optimization). This is the build the container image
# ships; `cargo build --release` stays the everyday one.
#
#   scripts/build-pgo.sh          # -> target/pgo/ferrogate
#
# Steps:
#   1. a release build that counts what runs (target/pgo-gen);
#   2. that binary serves example traffic for about a minute
#      (scripts/pgo-train.sh);
#   3. llvm-profdata merges the counts;
#   4. the release build again, laid out and inlined by those counts
#      (target/pgo-use), copied to target/pgo/ferrogate.
# Two release builds: about 20-25 minutes on 2 cores.
#
# The traffic (scripts/pgo-train.sh) covers every feature the examples
# route, and the bare forwarding path. Measured in bench/RESULTS.md
# ("the profile-guided build").
#
# Needs llvm-profdata of the LLVM version rustc uses (Debian: `llvm-NN`,
# installed here when apt-get is there and we are root; or rustup's
# llvm-tools component), h2load (nghttp2-client) and curl.
# Ports: as scripts/pgo-train.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

die() {
  printf 'build-pgo.sh: %s\n' "$1" >&2
  exit 1
}

llvm_major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
[ -n "$llvm_major" ] || die "cannot read rustc's LLVM version from 'rustc -vV'"

find_profdata() {
  local sysroot candidate
  sysroot="$(rustc --print sysroot)"
  for candidate in "$sysroot"/lib/rustlib/*/bin/llvm-profdata \
    "$(command -v "llvm-profdata-$llvm_major" || true)" \
    "/usr/lib/llvm-$llvm_major/bin/llvm-profdata"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

missing=()
find_profdata >/dev/null || missing+=("llvm-$llvm_major")
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
      || die "apt-get install ${missing[*]} failed"
  else
    die "missing ${missing[*]} (Debian packages; llvm-profdata may also come from 'rustup component add llvm-tools')"
  fi
fi
profdata="$(find_profdata)" || die "no llvm-profdata for LLVM $llvm_major"

data="$root/target/pgo-data"

echo "==> 1/4 instrumented release build (target/pgo-gen)" >&2
CARGO_TARGET_DIR="$root/target/pgo-gen" \
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$data" \
  cargo build --release --locked --bin ferrogate
# Build scripts ran instrumented too: only the training counts are kept.
rm -rf "$data"
mkdir -p "$data"

echo "==> 2/4 training traffic (scripts/pgo-train.sh)" >&2
"$root/scripts/pgo-train.sh" "$root/target/pgo-gen/release/ferrogate"

echo "==> 3/4 merging the counts" >&2
shopt -s nullglob
raws=("$data"/*.profraw)
# Processes of one binary merge their counts into one file as they exit.
[ "${#raws[@]}" -ge 1 ] || die "the training wrote no profile to $data"
"$profdata" merge -o "$data/merged.profdata" "${raws[@]}"

echo "==> 4/4 release build with the profile (target/pgo-use)" >&2
CARGO_TARGET_DIR="$root/target/pgo-use" \
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$data/merged.profdata" \
  cargo build --release --locked --bin ferrogate
install -D -m 0755 "$root/target/pgo-use/release/ferrogate" "$root/target/pgo/ferrogate"
echo "build-pgo.sh: target/pgo/ferrogate" >&2
