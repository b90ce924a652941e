#!/usr/bin/env bash
# Builds Traefik v3 (the ingress controller of the e2e journey) from the Go module proxy into the
# same per-user cache as e2e/build-binaries.sh, keyed by version. A second run finds the binary
# and returns at once. Prints the binary's path as its last line.
#
# Why not `go install github.com/traefik/traefik/v3/cmd/traefik@VERSION`: Traefik's go.mod has
# replace directives (go install refuses those), and one of them points at a nested module
# (./pkg/config/dynamic/ext) that the module proxy's zip leaves out, as it leaves out every
# nested module. So the build runs inside a copy of the module, with that nested module written
# here: in the open-source build it only declares empty extension structs that Traefik's
# dynamic configuration embeds (HTTP, Router, and RouterIng with its ToRouter conversion).
set -euo pipefail

TRAEFIK_VERSION="${SHOAL_TRAEFIK_VERSION:-v3.6.12}"
CACHE_ROOT="${SHOAL_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal-e2e}"
BIN="$CACHE_ROOT/bin-traefik-${TRAEFIK_VERSION}"

if [ -x "$BIN/traefik" ]; then echo "$BIN/traefik"; exit 0; fi
mkdir -p "$BIN" "$CACHE_ROOT/src"
# One build at a time per cache; its own lock, so it never waits on the control plane's build.
exec 9>"$CACHE_ROOT/build-traefik.lock"
flock 9
if [ -x "$BIN/traefik" ]; then echo "$BIN/traefik"; exit 0; fi
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--p=2}" GOTOOLCHAIN=local
log() { printf '[build-traefik %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start=$(date +%s)

log "traefik $TRAEFIK_VERSION"
modir="$(go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$modir" ] || { log "module download failed"; exit 1; }
src="$CACHE_ROOT/src/traefik-$TRAEFIK_VERSION"
rm -rf "$src"
cp -r "$modir" "$src"
chmod -R u+w "$src"
ext="$src/pkg/config/dynamic/ext"
if grep -q '=> ./pkg/config/dynamic/ext' "$src/go.mod"; then
mkdir -p "$ext"
printf 'module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24.0\n' > "$ext/go.mod"
cat > "$ext/ext.go" <<'GO'
// Package ext: extension points of Traefik's dynamic configuration, empty in the open-source build.
package ext

type HTTP struct{}

type Router struct{}

type RouterIng struct{}

func (RouterIng) ToRouter() Router { return Router{} }
GO
fi
cd "$src"
go build -trimpath \
  -ldflags="-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
  -o "$BIN/traefik.tmp" ./cmd/traefik >&2
mv "$BIN/traefik.tmp" "$BIN/traefik"
rm -rf "$src"
log "done in $(( $(date +%s) - start ))s"
echo "$BIN/traefik"
