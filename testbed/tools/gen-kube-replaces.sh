#!/usr/bin/env bash
# Generates the replace block of the kube wrapper module from the real go.mod of k8s.io/kubernetes.
# Upstream's go.mod points every staging module (k8s.io/api, k8s.io/client-go, ...) at ./staging/src/...,
# which a dependent module cannot use; each is published as k8s.io/<name> v0.<minor>.<patch>.
set -euo pipefail
version="${1:?usage: gen-kube-replaces.sh v1.36.x}"
staging="v0.${version#v1.}"
proxy="${GOPROXY_URL:-https://proxy.golang.org}"
curl -fsSL "$proxy/k8s.io/kubernetes/@v/$version.mod" |
  awk '/=> \.\/staging\/src\// { print $1 }' |
  while read -r mod; do printf '\t%s => %s %s\n' "$mod" "$mod" "$staging"; done
