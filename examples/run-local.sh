#!/usr/bin/env bash
# Runs the balancer with examples/balancer.yaml in front of three local
# example backends, sends a short bounded burst of requests through it, shows
# where they went, and keeps serving until Ctrl-C (or exits with --once).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/usher/target}"
once=false
[ "${1:-}" = "--once" ] && once=true
command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl; }

cargo build --release -p usher-balancer -p usher-examples
bin="$CARGO_TARGET_DIR/release"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for port in 9001 9002 9003; do
  "$bin/example-backend" --listen "127.0.0.1:$port" --name "pod-$port" --delay 5ms &
  pids+=($!)
done
# The backup pool: answers only while every moodle pod is down.
"$bin/example-backend" --listen 127.0.0.1:9009 --name maintenance-page &
pids+=($!)
"$bin/usher-balancer" check -c examples/balancer.yaml
"$bin/usher-balancer" run -c examples/balancer.yaml --log-format text &
pids+=($!)

for _ in $(seq 1 50); do
  curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null && break
  sleep 0.1
done

echo
echo "== 300 requests through http://127.0.0.1:8080/ (pod-9003 has twice the weight; no cookie jar, so no stickiness)"
for _ in $(seq 1 300); do curl -fsS http://127.0.0.1:8080/course/view.php; done | sort | uniq -c
echo
echo "== per-endpoint counters from http://127.0.0.1:9901/metrics"
curl -fsS http://127.0.0.1:9901/metrics | grep -E '^usher_balancer_upstream_responses_total.*2xx'
echo
echo "== endpoint status (http://127.0.0.1:9901/status)"
curl -fsS http://127.0.0.1:9901/status; echo

if $once; then exit 0; fi
echo
echo "Serving on http://127.0.0.1:8080 (admin on :9901). Edit examples/balancer.yaml to hot-reload. Ctrl-C to stop."
wait
