#!/usr/bin/env bash
# A bounded fault soak of usher-balancer (not run in CI; the test suite has a
# 20 s in-process one, balancer/tests/fault_soak.rs):
#
#   bench/fault-soak.sh              60 s, 8 clients (half GET, half POST)
#   SOAK_SECONDS=200 bench/fault-soak.sh
#
# Four example-backend processes behind the balancer (endpoints from a file).
# Every SOAK_EVERY seconds one backend is killed with SIGKILL and restarted a
# second later; in between the config is reloaded (the balancer watches it)
# and the endpoints file drops a backend and takes it back. The report prints
# requests and failures per method, and retries per cause from /metrics.
# It fails when any GET failed, or more POSTs failed than could have been in
# flight on the killed pods (one per POST client per kill: a POST that a pod
# was processing when it died may have been applied and is never replayed).
# All traffic stays on 127.0.0.1; every loop is bounded in time.
set -euo pipefail

die() { echo "fault-soak: $*" >&2; exit 1; }
log() { echo "fault-soak: $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/usher/target}
SECONDS_TOTAL=${SOAK_SECONDS:-60}
EVERY=${SOAK_EVERY:-3}
CLIENTS=${SOAK_CLIENTS:-8}
PORT_BASE=${SOAK_PORT_BASE:-18600}
PROXY_PORT=$PORT_BASE
ADMIN_PORT=$((PORT_BASE + 9))
BACKEND_PORTS=($((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)) $((PORT_BASE + 4)))
((SECONDS_TOTAL >= 10 && SECONDS_TOTAL <= 3600)) || die "SOAK_SECONDS must be 10 to 3600"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
WORK=$(mktemp -d /tmp/usher-fault-soak.XXXXXX)
cleanup() { kill_started; return 0; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p usher-balancer -p usher-examples) || die "cargo build failed"
cp "$CARGO_TARGET_DIR/release/usher-balancer" "$CARGO_TARGET_DIR/release/example-backend" "$WORK/"
for p in "$PROXY_PORT" "$ADMIN_PORT" "${BACKEND_PORTS[@]}"; do
    port_open "$p" && die "127.0.0.1:$p is already in use (set SOAK_PORT_BASE)"
done

endpoints() { # endpoints PORT...: the endpoints file, written atomically
    local p
    { for p in "$@"; do echo "- \"127.0.0.1:$p\""; done; } >"$WORK/endpoints.yaml.tmp"
    mv "$WORK/endpoints.yaml.tmp" "$WORK/endpoints.yaml"
}
config() { # config DRAIN_SECONDS
    cat >"$WORK/balancer.yaml.tmp" <<YAML
listeners:
  - name: public
    bind: "127.0.0.1:$PROXY_PORT"
admin:
  bind: "127.0.0.1:$ADMIN_PORT"
routes:
  - pool: web
pools:
  web:
    endpoints:
      file: {path: endpoints.yaml, interval: 200ms}
    outlierDetection: {consecutive5xx: 3, baseEjectionTime: 2s, maxEjectionPercent: 50}
    drainTimeout: ${1}s
YAML
    mv "$WORK/balancer.yaml.tmp" "$WORK/balancer.yaml"
}

declare -A BACKEND_PID
start_backend() {
    start "$WORK/backend-$1.log" "$WORK/example-backend" --listen "127.0.0.1:$1"
    BACKEND_PID[$1]=$LAST_PID
    wait_port "$1" "$LAST_PID" "$WORK/backend-$1.log"
}
for p in "${BACKEND_PORTS[@]}"; do start_backend "$p"; done
endpoints "${BACKEND_PORTS[@]}"
config 30
start "$WORK/balancer.log" env USHER_LOG=warn "$WORK/usher-balancer" run -c "$WORK/balancer.yaml"
wait_port "$PROXY_PORT" "$LAST_PID" "$WORK/balancer.log"
[[ $(http_status "$PROXY_PORT") == *" 200"* ]] || die "GET / through the balancer failed"

log "load: $CLIENTS clients for $SECONDS_TOTAL s; a backend killed every $EVERY s"
python3 "$ROOT/bench/fault_soak_client.py" --url "http://127.0.0.1:$PROXY_PORT/mod/quiz/attempt.php" \
    --clients "$CLIENTS" --seconds "$SECONDS_TOTAL" >"$WORK/client.out" &
CLIENT_PID=$!
kills=0 round=0
end=$((SECONDS + SECONDS_TOTAL - EVERY))
while ((SECONDS < end)); do
    sleep "$((EVERY - 1))"
    p=${BACKEND_PORTS[$((round % 4))]}
    kill -KILL "${BACKEND_PID[$p]}" 2>/dev/null || true
    wait "${BACKEND_PID[$p]}" 2>/dev/null || true
    forget "${BACKEND_PID[$p]}"
    kills=$((kills + 1))
    sleep 1
    start_backend "$p"
    case $((round % 3)) in
        0) config $((30 + round % 7)) ;;                        # a reload
        1) endpoints "${BACKEND_PORTS[@]:1}" ;;                  # an endpoint leaves...
        2) endpoints "${BACKEND_PORTS[@]}" ;;                    # ...and comes back
    esac
    round=$((round + 1))
done
wait "$CLIENT_PID" || die "the load client failed"

read -r get_ok get_failed post_ok post_failed <"$WORK/client.out"
metrics=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf "GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n" >&3; cat <&3' _ "$ADMIN_PORT")
series() { awk -v s="$1" 'index($0, s) == 1 {v += $NF} END {print v + 0}' <<<"$metrics"; }
cat <<REPORT

| | requests | failed |
| --- | ---: | ---: |
| GET | $((get_ok + get_failed)) | $get_failed |
| POST | $((post_ok + post_failed)) | $post_failed |

backend kills: $kills (plus $((round / 3 + 1)) reloads and $(((round + 1) / 3)) endpoint removals)
retries, never reached a pod (not_sent): $(series 'usher_balancer_pool_retries_total{pool="web",reason="not_sent"}')
retries, reset before any response byte: $(series 'usher_balancer_pool_retries_total{pool="web",reason="reset"}')
retries refused by the budget: $(series 'usher_balancer_retry_budget_exhausted_total')
ejections: $(series 'usher_balancer_ejections_total')
REPORT
tail -n +2 "$WORK/client.out" | sed 's/^/  /'
echo "logs: $WORK"
((get_failed == 0)) || die "$get_failed GETs failed"
((post_failed <= kills * (CLIENTS / 2))) || die "$post_failed POSTs failed: more than were in flight on the killed pods"
echo "fault-soak: passed"
