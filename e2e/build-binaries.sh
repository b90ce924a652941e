#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and helm from the Go module proxy into a per-user cache
# keyed by version. A second run finds the binaries and returns in well under a second.
# `--node` also builds what a real node runs (the kubelet) from the same pinned
# k8s.io/kubernetes, in a wrapper module of its own (kubelet needs modules the control
# plane's go.sum lacks, and tidying one shared module would rebuild the control plane).
set -euo pipefail
NODE=0
[ "${1:-}" = "--node" ] && NODE=1

K8S_VERSION="${SHOAL_K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${SHOAL_ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${SHOAL_HELM_VERSION:-v3.22.0}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
CACHE_ROOT="${SHOAL_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal-e2e}"
BIN="$CACHE_ROOT/bin-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}"
WANT=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm)
NODE_BINS=(kubelet)
[ "$NODE" = 1 ] && WANT+=("${NODE_BINS[@]}")

have_all() { for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }
if have_all; then echo "$BIN"; exit 0; fi

mkdir -p "$BIN" "$CACHE_ROOT/src"
# One build at a time per cache (parallel test sessions on a fresh machine): wait for the other.
exec 9>"$CACHE_ROOT/build.lock"
flock 9
if have_all; then echo "$BIN"; exit 0; fi
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--p=2}" GOTOOLCHAIN=local
log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start=$(date +%s)

if [ ! -x "$BIN/etcd" ]; then
  log "etcd $ETCD_VERSION"
  d="$CACHE_ROOT/src/etcd-$ETCD_VERSION"; mkdir -p "$d"; cd "$d"
  [ -f go.mod ] || go mod init example.local/etcdbin >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
  go build -trimpath -ldflags='-s -w' -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
  mv "$BIN/etcd.tmp" "$BIN/etcd"
fi

# A module that requires k8s.io/kubernetes and replaces its staging modules (v0.0.0 in its
# go.mod) with their published versions; tools.go imports the commands named as arguments.
wrapper_module() {
  local dir="$1"; shift
  mkdir -p "$dir"; cd "$dir"
  [ -f .tidy-done ] && return 0
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
  local modfile
  modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
  {
    echo "module example.local/k8sbins"
    echo "go 1.26"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo "replace ("
    grep -E '^\s*k8s.io/[a-z0-9-]+ v0\.0\.0\s*$' "$modfile" | awk '{print $1}' | sort -u |
      while read -r m; do echo "  $m => $m $STAGING_VERSION"; done
    echo ")"
  } > go.mod
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for b in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
    printf ')\n'
  } > tools.go
  go mod tidy >&2
  touch .tidy-done
}

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
build_k8s() {  # build_k8s DIR BIN...: the missing ones of BIN... from the wrapper module in DIR
  local dir="$1"; shift
  local missing=()
  for b in "$@"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "kubernetes $K8S_VERSION (staging $STAGING_VERSION): ${missing[*]}"
  wrapper_module "$dir" "$@"
  for b in "${missing[@]}"; do
    log "  go build $b"
    go build -trimpath -ldflags="$ldflags" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2
    mv "$BIN/$b.tmp" "$BIN/$b"
  done
}
build_k8s "$CACHE_ROOT/src/k8s-$K8S_VERSION" kube-apiserver kube-controller-manager kube-scheduler kubectl
[ "$NODE" = 1 ] && build_k8s "$CACHE_ROOT/src/k8s-node-$K8S_VERSION" "${NODE_BINS[@]}"

if [ ! -x "$BIN/helm" ]; then
  log "helm $HELM_VERSION"
  d="$CACHE_ROOT/src/helm-$HELM_VERSION"; mkdir -p "$d"; cd "$d"
  [ -f go.mod ] || go mod init example.local/helmbin >/dev/null 2>&1
  go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  go build -trimpath -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$BIN/helm.tmp" helm.sh/helm/v3/cmd/helm >&2
  mv "$BIN/helm.tmp" "$BIN/helm"
fi

log "done in $(( $(date +%s) - start ))s"
echo "$BIN"
