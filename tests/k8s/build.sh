#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager 1.20.2 from Debian's
# source package (everything vendored, no network but Debian's mirrors) and
# caches them under ~/.cache/usher/k8s/bin. Also installs etcd-server.
# Idempotent: does nothing when the cached binaries exist and were built by
# this recipe (the stamp file bin/.recipe).
#
# Debian's Go (1.19) is newer than what 1.20 was made for: its vendored
# github.com/modern-go/reflect2 v1.0.1 makes the apiserver panic on every JSON
# request body (nil dereference in reflect2.Type2, fixed upstream in v1.0.2),
# so the vendored copy is replaced by Debian's reflect2 1.0.2 before building.
set -euo pipefail
cache="${USHER_K8S_CACHE:-$HOME/.cache/usher/k8s}"
bin="$cache/bin"
recipe="reflect2-1.0.2"
built() {
  [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] &&
    [ "$(cat "$bin/.recipe" 2>/dev/null)" = "$recipe" ]
}
if built && command -v etcd >/dev/null 2>&1; then
  exit 0
fi
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! grep -rqsE '^(deb-src |Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # deb822 form, with the same keyring as the binary entries (apt refuses mixed Signed-By values).
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | sudo_ tee /etc/apt/sources.list.d/usher-deb-src.sources >/dev/null
fi
sudo_ apt-get update -qq
sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go rsync jq etcd-server dpkg-dev \
  golang-github-modern-go-reflect2-dev >/dev/null
built && exit 0
mkdir -p "$cache/src" "$bin"
cd "$cache/src"
tree=$(find . -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -n1)
if [ -z "$tree" ]; then
  apt-get source -qq kubernetes >/dev/null
  tree=$(find . -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -n1)
fi
tree=$(cd "$tree" && pwd)
reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -f "$reflect2/go_above_118.go" ] || { echo "error: $reflect2 is not reflect2 >= 1.0.2" >&2; exit 1; }
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
cp "$reflect2"/*.go "$reflect2"/*.s "$tree/vendor/github.com/modern-go/reflect2/"
rm -f "$tree"/vendor/github.com/modern-go/reflect2/*_test.go
mkdir -p "$tree/.go/src/k8s.io"
ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
cd "$tree/.go/src/k8s.io/kubernetes"
export CGO_ENABLED=0 GOPATH="$tree/.go" GOFLAGS=-mod=vendor GO111MODULE=off
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$bin/"
echo "$recipe" >"$bin/.recipe"
"$bin/kube-apiserver" --version
