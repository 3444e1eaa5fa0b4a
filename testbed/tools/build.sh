#!/usr/bin/env bash
# Builds the pinned test-bed tools from upstream Go modules into the tools cache (outside the repo).
# Usage: build.sh [etcd] [kube] [kwok] [helm] [jaeger]   (default: all). Prints nothing but progress on stderr.
# A tool whose binaries are already in the cache is skipped, so a warm run takes seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
. "$here/../versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0
bin="${TOOLS_DIR:-$HOME/.cache/kubedirector-rs/tools/$("$here/pin.sh")/bin}"
mkdir -p "$bin"

have() { for b in "$@"; do [ -x "$bin/$b" ] || return 1; done; }
log() { printf '[tools] %s\n' "$*" >&2; }

build_etcd() {
  have etcd && return 0
  log "building etcd $ETCD_VERSION"
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)
}

build_kube() {
  have kube-apiserver kube-controller-manager kube-scheduler kubectl && return 0
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBE_VERSION (several minutes cold)"
  local v="${KUBE_VERSION#v}" major minor flags=()
  major="${v%%.*}"; minor="${v#*.}"; minor="${minor%%.*}"
  # The same variables upstream's hack/lib/version.sh sets, so that /version reports the pinned release.
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=("-X '$pkg.gitVersion=$KUBE_VERSION'" "-X '$pkg.gitMajor=$major'" "-X '$pkg.gitMinor=$minor'"
            "-X '$pkg.gitTreeState=clean'" "-X '$pkg.buildDate=1970-01-01T00:00:00Z'")
  done
  (cd "$here/kube" && go build -trimpath -ldflags "-s -w ${flags[*]}" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}

build_kwok() {
  have kwok kwokctl && [ -s "$bin/kwok-stages.yaml" ] && return 0
  log "building kwok, kwokctl $KWOK_VERSION"
  (cd "$here/kwok" && go build -trimpath -ldflags "-s -w -X 'sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}'" -o "$bin/" \
    sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl)
  kwok_stages > "$bin/kwok-stages.yaml.tmp" && mv "$bin/kwok-stages.yaml.tmp" "$bin/kwok-stages.yaml"
}

# kwokctl's default stages, taken from the pinned kwok module, with one change: running containers get a
# containerID, as a kubelet reports it. The operator keys a member's setup on its container ID, which the
# stock stages leave empty. (kwokctl uses its defaults only when no stage is given, so all are listed.)
kwok_stages() {
  local src
  src="$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"
    case "$f" in
      pod/fast/pod-ready.yaml)
        sed 's/^\( *\)- image: {{ .image | Quote }}$/&\n\1  containerID: {{ printf "kwok:\/\/%s-%s" $.metadata.uid .name | Quote }}/' "$src/$f" ;;
      *) cat "$src/$f" ;;
    esac
  done
}

build_helm() {
  have helm && return 0
  log "building helm $HELM_VERSION"
  (cd "$here/helm" && go build -trimpath -ldflags "-s -w -X 'helm.sh/helm/v4/internal/version.version=$HELM_VERSION'" \
    -o "$bin/" helm.sh/helm/v4/cmd/helm)
}

# Jaeger v2 (an OpenTelemetry Collector distribution); its Go module keeps v1 tags: v1.76.0 is v2.13.0.
build_jaeger() {
  have jaeger && return 0
  log "building jaeger $JAEGER_VERSION (a few minutes cold)"
  (cd "$here/jaeger" && go build -trimpath -ldflags "-s -w" -o "$bin/" github.com/jaegertracing/jaeger/cmd/jaeger)
}

targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(etcd kube kwok helm jaeger)
for t in "${targets[@]}"; do
  case "$t" in
    etcd|kube|kwok|helm|jaeger) "build_$t" ;;
    *) echo "build.sh: unknown tool '$t' (allowed: etcd, kube, kwok, helm, jaeger)" >&2; exit 2 ;;
  esac
done
echo "$bin"
