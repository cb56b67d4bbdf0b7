#!/usr/bin/env bash
# The training traffic of the profile-guided build (scripts/build-pgo.sh),
# sent to the Ferrogate binary given:
#
#   scripts/pgo-train.sh BINARY
#
# It covers what the examples route, so that no feature is laid out as
# cold code: `BINARY demo` (the shop from examples/ and its four sample
# services) over HTTPS with HTTP/2 and HTTP/1.1, desktop and mobile
# clients (device routing, JSON trimming), JWT and API-key authentication
# and refusals, the add-to-cart rate limit, cached answers, the aggregated
# home page, redirects and 404s, new TLS connections; and a plain HTTP
# `BINARY serve` with one route in front of the products service, for the
# bare forwarding path. Every step must get answers (refusals included) and
# both processes must exit cleanly on SIGTERM, which is when an
# instrumented binary writes its counts. tests/pgo_training.rs runs it on
# the debug build.
#
# Needs h2load (nghttp2-client) and curl. Ports: PGO_PORT_BASE (18000) to
# PGO_PORT_BASE+7 on 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

die() {
  printf 'pgo-train.sh: %s\n' "$1" >&2
  exit 1
}

[ "$#" = 1 ] && [ -x "$1" ] || die "usage: scripts/pgo-train.sh BINARY (an executable ferrogate)"
binary="$1"
command -v h2load >/dev/null || die "h2load is missing (Debian: nghttp2-client)"
command -v curl >/dev/null || die "curl is missing"

base="${PGO_PORT_BASE:-18000}"
http=$((base)) https=$((base + 1)) admin=$((base + 2)) plain=$((base + 3)) services=$((base + 4))
work="$(mktemp -d)"
demo=""
serve=""
cleanup() {
  [ -z "$demo" ] || kill "$demo" 2>/dev/null || true
  [ -z "$serve" ] || kill "$serve" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$binary" demo --http "127.0.0.1:$http" --https "127.0.0.1:$https" --admin "127.0.0.1:$admin" \
  --services-port-base "$services" >"$work/demo.out" 2>&1 &
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
"$binary" serve --manifests "$work/plain" --threads 1 --http "127.0.0.1:$plain" --https none \
  --admin none --access-log off >"$work/plain.out" 2>&1 &
serve=$!

ready=""
for _ in $(seq 1 180); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" 2>/dev/null \
    && curl -sS -o /dev/null -H 'Host: plain.local' "http://127.0.0.1:$plain/" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.5
done
[ -n "$ready" ] || die "the gateway did not start: $(tail -5 "$work/demo.out" "$work/plain.out")"

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

# An instrumented binary writes its counts when it exits normally.
kill -TERM "$serve" "$demo"
status=0
wait "$serve" || status=$?
serve=""
[ "$status" = 0 ] || die "serve did not exit cleanly ($status): $(tail -5 "$work/plain.out")"
wait "$demo" || status=$?
demo=""
[ "$status" = 0 ] || die "demo did not exit cleanly ($status): $(tail -5 "$work/demo.out")"
echo "pgo-train.sh: done" >&2

