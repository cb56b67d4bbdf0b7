#!/usr/bin/env bash
# The release build, optimized with a profile of Ferrogate's own traffic
# (profile-guided optimization). This is the build the container image
# ships; `cargo build --release` stays the everyday one.
#
#   scripts/build-pgo.sh          # -> target/pgo/ferrogate
#
# Steps:
#   1. a release build that counts what runs (target/pgo-gen);
#   2. that binary serves example traffic for about a minute (below);
#   3. llvm-profdata merges the counts;
#   4. the release build again, laid out and inlined by those counts
#      (target/pgo-use), copied to target/pgo/ferrogate.
# Two release builds: about 20-25 minutes on 2 cores.
#
# The traffic covers what the examples route, so that no feature is laid
# out as cold code: `ferrogate demo` (the shop from examples/ and its four
# sample services) over HTTPS with HTTP/2 and HTTP/1.1, desktop and mobile
# clients (device routing, JSON trimming), JWT and API-key authentication
# and refusals, the add-to-cart rate limit, cached answers, the aggregated
# home page, redirects and 404s, new TLS connections; and a plain HTTP
# `serve` with one route in front of the products service, for the bare
# forwarding path. Measured in bench/RESULTS.md ("Profile-guided build").
#
# Needs llvm-profdata of the LLVM version rustc uses (Debian: `llvm-NN`,
# installed here when apt-get is there and we are root; or rustup's
# llvm-tools component), h2load (nghttp2-client) and curl.
# Ports: the demo's listeners and services take PGO_PORT_BASE (18000) to
# PGO_PORT_BASE+7 on 127.0.0.1.
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
    { apt-get install -y --no-install-recommends "${missing[@]}" \
      || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }; } >&2 \
      || die "apt-get could not install ${missing[*]}"
  else
    die "missing ${missing[*]} (Debian packages; llvm-profdata may also come from 'rustup component add llvm-tools')"
  fi
fi
profdata="$(find_profdata)" || die "no llvm-profdata for LLVM $llvm_major"

base="${PGO_PORT_BASE:-18000}"
http=$((base)) https=$((base + 1)) admin=$((base + 2)) plain=$((base + 3)) services=$((base + 4))
data="$root/target/pgo-data"
work="$(mktemp -d)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> 1/4 instrumented release build (target/pgo-gen)" >&2
CARGO_TARGET_DIR="$root/target/pgo-gen" \
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$data" \
  cargo build --release --locked --bin ferrogate
# Build scripts ran instrumented too: only the training counts are kept.
rm -rf "$data"
mkdir -p "$data"
gen="$root/target/pgo-gen/release/ferrogate"

echo "==> 2/4 training traffic" >&2
"$gen" demo --http "127.0.0.1:$http" --https "127.0.0.1:$https" --admin "127.0.0.1:$admin" \
  --services-port-base "$services" >"$work/demo.out" 2>&1 &
pids+=($!)
demo=$!
mkdir "$work/plain"
cat >"$work/plain/route.yaml" <<EOF
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata:
  name: plain
  namespace: default
spec:
  hosts: ["plain.local"]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
    backends:
    - url: http://127.0.0.1:$services
EOF
"$gen" serve --manifests "$work/plain" --threads 1 --http "127.0.0.1:$plain" --https none \
  --admin none --access-log off >"$work/plain.out" 2>&1 &
pids+=($!)
serve=$!

ready=""
for _ in $(seq 1 120); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" 2>/dev/null \
    && curl -sS -o /dev/null -H 'Host: plain.local' "http://127.0.0.1:$plain/" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.5
done
[ -n "$ready" ] || die "the instrumented gateway did not start: $(tail -5 "$work/demo.out" "$work/plain.out")"

tls="https://shop.localhost:$https"
to=(--connect-to "127.0.0.1:$https")
desktop='user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
mobile='user-agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148'
printf '{"productId":"p-102"}' >"$work/item.json"
load() {
  local out
  out="$(h2load "$@" 2>&1)" || die "h2load $* failed: $out"
  # Refusals (401, 403, 429, 404) are part of the training: h2load counts
  # them as failed, so what is checked is that answers came, none broken.
  grep -Eq '^requests: .* [1-9][0-9]* done, .* 0 errored' <<<"$out" \
    || die "h2load $* got no answers: $out"
}
# The bare forwarding path, HTTP/1.1 keep-alive.
load --h1 -n 60000 -c 50 -H ':authority: plain.local' "http://127.0.0.1:$plain/products"
# HTTPS, HTTP/2 and HTTP/1.1, desktop and mobile clients.
load -n 20000 -c 10 -m 10 -H "$desktop" "${to[@]}" "$tls/products"
load -n 20000 -c 10 -m 10 -H "$mobile" "${to[@]}" "$tls/products"
load --h1 -n 20000 -c 20 -H "$desktop" "${to[@]}" "$tls/products/p-100"
load -n 10000 -c 10 -m 10 -H "$desktop" "${to[@]}" "$tls/users/me"
# Cached answers, the aggregated home page.
load -n 20000 -c 10 -m 10 -H "$desktop" "${to[@]}" "$tls/products/p-101"
load -n 5000 -c 10 -m 5 -H "$mobile" "${to[@]}" "$tls/"
# Authentication: API key and refusals (401 without credentials).
load -n 10000 -c 10 -m 10 -H 'x-api-key: demo-key-alice' "${to[@]}" "$tls/payments"
load -n 5000 -c 10 -m 10 -H 'x-api-key: demo-key-carol' "${to[@]}" "$tls/payments"
load -n 5000 -c 10 -m 10 "${to[@]}" "$tls/payments"
alice="$(grep -o "Bearer [A-Za-z0-9._-]*" "$work/demo.out" | sed -n 2p | cut -d' ' -f2)"
[ -n "$alice" ] || die "no JWT in the demo's instructions"
load -n 10000 -c 10 -m 10 -H "authorization: Bearer $alice" "${to[@]}" "$tls/payments"
# The add-to-cart limit (mostly 429 after the first 35), redirects, 404s.
load -n 5000 -c 10 -m 10 -d "$work/item.json" -H 'content-type: application/json' \
  "${to[@]}" "$tls/cart/items"
load -n 5000 -c 10 -m 10 "${to[@]}" "$tls/shop/p-100"
load -n 5000 -c 10 -m 10 "${to[@]}" "$tls/no-such-path"
load --h1 -n 5000 -c 10 -H ':authority: shop.localhost' "http://127.0.0.1:$http/products"
# New TLS connections, one request each.
load --h1 -n 2000 -c 100 -m 1 "${to[@]}" "$tls/healthz"
curl -fsS -o /dev/null "http://127.0.0.1:$admin/metrics" || die "the admin listener stopped answering"

# The counts are written when the processes exit normally.
kill -TERM "$serve" "$demo"
wait "$serve" || die "the instrumented serve did not exit cleanly: $(tail -5 "$work/plain.out")"
wait "$demo" || die "the instrumented demo did not exit cleanly: $(tail -5 "$work/demo.out")"
pids=()

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
