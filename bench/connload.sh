#!/usr/bin/env bash
# Connection-load benchmark: memory (RSS) per idle connection, usher-balancer
# against HAProxy, in the same run, on this machine.
#
#   bench/connload.sh                    N=2000 connections per scenario (about 2 min)
#   CONNLOAD_N=200 bench/connload.sh     a quick check that everything works
#
# Scenarios, each against a freshly started proxy: N idle HTTP/1.1 keep-alive
# connections (one GET each), N WebSockets (upgrade, one echoed message), N
# idle HTTP/2 cleartext connections (prior knowledge, one GET each). Per run:
# VmRSS at start (baseline), after opening N (loaded), and after closing them
# all (after close); (loaded - baseline) / N is the memory per connection.
# The keep-alive scenario repeats open/close on the same process to show
# whether memory comes back. Uses the binaries already built (never builds).
# Writes bench/connload-results.md; see bench/README.md for the details.
set -euo pipefail

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Environment (all optional):
  CONNLOAD_N           connections per scenario (and per wave)     (2000)
  CONNLOAD_BATCH       connections opened at a time                (500)
  CONNLOAD_WAVES       open/close waves in the keep-alive scenario (3)
  CONNLOAD_SETTLE      seconds after opening before "loaded"       (2)
  CONNLOAD_DRAIN       seconds after closing before "after close"  (3)
  CONNLOAD_SCENARIOS   which scenarios, in order                   ("http1 ws h2c")
  CONNLOAD_PORT_BASE   first port used on 127.0.0.1 (4 ports)      (18500)
  CONNLOAD_PROXY_CPU   core the proxy is pinned to                 (0)
  CONNLOAD_LOAD_CPU    core the client and backends are pinned to  (1)
  CONNLOAD_PROFILE     release or debug binaries                   (release if built, else debug)
  CONNLOAD_RESULTS     markdown output file                        (bench/connload-results.md)
  CARGO_TARGET_DIR     cargo target dir                            (~/.cache/usher/target)
EOF
}

for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/usher/target}

N=${CONNLOAD_N:-2000}
BATCH=${CONNLOAD_BATCH:-500}
WAVES=${CONNLOAD_WAVES:-3}
SETTLE=${CONNLOAD_SETTLE:-2}
DRAIN=${CONNLOAD_DRAIN:-3}
SCENARIOS=${CONNLOAD_SCENARIOS:-http1 ws h2c}
PORT_BASE=${CONNLOAD_PORT_BASE:-18500}
PROXY_CPU=${CONNLOAD_PROXY_CPU:-0}
LOAD_CPU=${CONNLOAD_LOAD_CPU:-1}
PROFILE=${CONNLOAD_PROFILE:-}
RESULTS=${CONNLOAD_RESULTS:-$ROOT/bench/connload-results.md}

die() { echo "connload: $*" >&2; exit 1; }
log() { echo "connload: $*" >&2; }

for v in N BATCH WAVES SETTLE DRAIN PORT_BASE PROXY_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "CONNLOAD_$v must be a whole number, got '${!v}'"
done
((N >= 1 && N <= 50000)) || die "CONNLOAD_N must be 1..50000"
((BATCH >= 1 && WAVES >= 1 && WAVES <= 10)) || die "CONNLOAD_BATCH >= 1, CONNLOAD_WAVES 1..10"
((SETTLE <= 60 && DRAIN <= 60)) || die "CONNLOAD_SETTLE and CONNLOAD_DRAIN are capped at 60 s"
for s in $SCENARIOS; do
    case $s in http1 | ws | h2c) ;; *) die "unknown scenario '$s' (http1, ws, h2c)" ;; esac
done
[[ -n ${SCENARIOS// /} ]] || die "CONNLOAD_SCENARIOS is empty"
NCPU=$(nproc --all 2>/dev/null || getconf _NPROCESSORS_ONLN)
if ((NCPU < 2)); then
    log "only $NCPU core: proxy and load share core 0"
    PROXY_CPU=0 LOAD_CPU=0
fi
((PROXY_CPU < NCPU && LOAD_CPU < NCPU)) || die "CONNLOAD_PROXY_CPU/CONNLOAD_LOAD_CPU must be below $NCPU"
ON_PROXY=(taskset -c "$PROXY_CPU")
ON_LOAD=(taskset -c "$LOAD_CPU")

PORT_H1=$PORT_BASE           # both proxies: HTTP/1.1 (and WebSocket) listener
PORT_H2=$((PORT_BASE + 1))   # both proxies: h2c listener (HAProxy: proto h2)
PORT_HTTP_BACKEND=$((PORT_BASE + 2))
PORT_WS_BACKEND=$((PORT_BASE + 3))

# --- file descriptors ---------------------------------------------------------
# 65536 when allowed; without CAP_SYS_RESOURCE the hard limit is the ceiling.
ulimit -n 65536 2>/dev/null || {
    hard=$(ulimit -Hn)
    [[ $hard == unlimited ]] && hard=65536
    ulimit -n "$hard"
    log "cannot raise the open-file limit to 65536 (no CAP_SYS_RESOURCE?); using the hard limit $hard"
}
NOFILE=$(ulimit -n)
# the proxy holds N client sockets plus up to N upstream ones (WebSocket tunnels)
((NOFILE >= 2 * N + 512)) || die "open-file limit $NOFILE is too low for CONNLOAD_N=$N (needs $((2 * N + 512)))"
# HAProxy refuses to start unless it can get about 2 x maxconn descriptors
HAPROXY_MAXCONN=$(((NOFILE - 256) / 2))
((HAPROXY_MAXCONN > 20000)) && HAPROXY_MAXCONN=20000

# --- tools ---------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 not found"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
if ! command -v haproxy >/dev/null; then
    sudo=()
    ((EUID == 0)) || sudo=(sudo)
    log "installing haproxy"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq haproxy >/dev/null
fi

# --- binaries (never built here) -------------------------------------------------
if [[ -z $PROFILE ]]; then
    if [[ -x $CARGO_TARGET_DIR/release/usher-balancer ]]; then PROFILE=release; else PROFILE=debug; fi
fi
[[ $PROFILE == release || $PROFILE == debug ]] || die "CONNLOAD_PROFILE must be release or debug"
USHER_SRC=$CARGO_TARGET_DIR/$PROFILE/usher-balancer
[[ -x $USHER_SRC ]] || die "$USHER_SRC not found: build it first (cargo build --release -p usher-balancer)"
DEBUG_WARNING=
if [[ $PROFILE == debug ]]; then
    DEBUG_WARNING="usher-balancer is a DEBUG build ($USHER_SRC): its memory figures are not meaningful; build --release for real numbers"
    log "WARNING: $DEBUG_WARNING"
fi
BACKEND_SRC=
for p in "$PROFILE" release debug; do
    [[ -x $CARGO_TARGET_DIR/$p/example-backend ]] && { BACKEND_SRC=$CARGO_TARGET_DIR/$p/example-backend; break; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/usher-connload.XXXXXX")
# copies, so a concurrent cargo build in the same target dir cannot swap them mid-run
cp "$USHER_SRC" "$WORK/usher-balancer"
USHER_BIN=$WORK/usher-balancer
if [[ -n $BACKEND_SRC ]]; then
    cp "$BACKEND_SRC" "$WORK/example-backend"
    HTTP_BACKEND_DESC="example-backend ($BACKEND_SRC)"
else
    log "no example-backend in $CARGO_TARGET_DIR: the Python backend serves plain HTTP too"
    HTTP_BACKEND_DESC="bench/connload_ws_backend.py (no example-backend built)"
fi

# --- processes -------------------------------------------------------------------
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cleanup() {
    kill_started
    rm -f "$WORK/usher-balancer" "$WORK/example-backend" # large copies; logs and configs stay
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for p in "$PORT_H1" "$PORT_H2" "$PORT_HTTP_BACKEND" "$PORT_WS_BACKEND"; do
    port_open "$p" && die "127.0.0.1:$p is already in use (set CONNLOAD_PORT_BASE)"
done

# --- configs ---------------------------------------------------------------------
HAPROXY_CFG=$WORK/haproxy.cfg
cat >"$HAPROXY_CFG" <<EOF
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 600s
    timeout server 600s
    timeout tunnel 600s
    timeout http-keep-alive 600s

frontend connload
    bind 127.0.0.1:$PORT_H1
    bind 127.0.0.1:$PORT_H2 proto h2
    use_backend ws if { path_beg /ws/ }
    default_backend http

backend http
    server http1 127.0.0.1:$PORT_HTTP_BACKEND

backend ws
    server ws1 127.0.0.1:$PORT_WS_BACKEND
EOF
haproxy -c -q -f "$HAPROXY_CFG" || die "haproxy rejected $HAPROXY_CFG"

USHER_CFG=$WORK/usher.yaml
write_usher_cfg() { # write_usher_cfg EXTRA_LIMITS
    cat >"$USHER_CFG" <<EOF
listeners:
  - name: h1
    bind: "127.0.0.1:$PORT_H1"
    limits: {headerReadTimeout: 600s$1}
  - name: h2c
    bind: "127.0.0.1:$PORT_H2"
    limits: {headerReadTimeout: 600s$1}
shutdown:
  drainTimeout: 1s
routes:
  - pathPrefix: /ws/
    pool: ws
  - pathPrefix: /
    pool: http
pools:
  http:
    endpoints:
      static: ["127.0.0.1:$PORT_HTTP_BACKEND"]
  ws:
    endpoints:
      static: ["127.0.0.1:$PORT_WS_BACKEND"]
EOF
}
write_usher_cfg ", idleTimeout: 600s"
if "$USHER_BIN" check -c "$USHER_CFG" >"$WORK/usher-check.log" 2>&1; then
    USHER_IDLE="limits.idleTimeout: 600s"
else
    write_usher_cfg ""
    "$USHER_BIN" check -c "$USHER_CFG" >"$WORK/usher-check.log" 2>&1 ||
        { cat "$WORK/usher-check.log" >&2; die "usher-balancer rejected $USHER_CFG"; }
    USHER_IDLE="no idleTimeout key (this binary refuses limits.idleTimeout)"
fi
log "usher config: headerReadTimeout 600s, $USHER_IDLE"

# --- backends --------------------------------------------------------------------
if [[ -n $BACKEND_SRC ]]; then
    start "$WORK/http-backend.log" "${ON_LOAD[@]}" "$WORK/example-backend" --listen "127.0.0.1:$PORT_HTTP_BACKEND"
else
    start "$WORK/http-backend.log" "${ON_LOAD[@]}" python3 "$ROOT/bench/connload_ws_backend.py" --listen "127.0.0.1:$PORT_HTTP_BACKEND"
fi
wait_port "$PORT_HTTP_BACKEND" "$LAST_PID" "$WORK/http-backend.log" 20
start "$WORK/ws-backend.log" "${ON_LOAD[@]}" python3 "$ROOT/bench/connload_ws_backend.py" --listen "127.0.0.1:$PORT_WS_BACKEND"
wait_port "$PORT_WS_BACKEND" "$LAST_PID" "$WORK/ws-backend.log" 20
log "backends: HTTP on 127.0.0.1:$PORT_HTTP_BACKEND, WebSocket echo on 127.0.0.1:$PORT_WS_BACKEND (core $LOAD_CPU)"

# --- runs ------------------------------------------------------------------------
TSV=$WORK/results.tsv
THREADS_TSV=$WORK/threads.tsv
: >"$THREADS_TSV"
python3 "$ROOT/bench/connload_client.py" --header-only >"$TSV"

start_proxy() { # start_proxy NAME LOGFILE: fresh process, both ports open, GET / = 200; pid in LAST_PID
    local name=$1 logf=$2 status comm
    case $name in
        haproxy) start "$logf" "${ON_PROXY[@]}" haproxy -db -f "$HAPROXY_CFG" ;;
        usher) start "$logf" env USHER_LOG=info "${ON_PROXY[@]}" "$USHER_BIN" run -c "$USHER_CFG" ;;
    esac
    wait_port "$PORT_H1" "$LAST_PID" "$logf" 20
    wait_port "$PORT_H2" "$LAST_PID" "$logf" 20
    comm=$(<"/proc/$LAST_PID/comm")
    [[ $comm == haproxy || $comm == usher-balance* ]] || die "pid $LAST_PID is '$comm', not the proxy"
    status=$(http_status "$PORT_H1" /)
    [[ $status == "HTTP/1.1 200"* ]] || { cat "$logf" >&2; die "$name answered '$status' to GET /"; }
}

run_one() { # run_one PROXY SCENARIO
    local name=$1 scenario=$2 port=$PORT_H1 waves=1 pid rc=0
    [[ $scenario == h2c ]] && port=$PORT_H2
    [[ $scenario == http1 ]] && waves=$WAVES
    start_proxy "$name" "$WORK/$name-$scenario.log"
    pid=$LAST_PID
    sleep 0.5 # let start-up work settle before the baseline
    # bounded: each batch is capped at 15 s inside the client, plus settle/drain per wave
    local cap=$((waves * ((N + BATCH - 1) / BATCH * 16 + SETTLE + DRAIN + 10) + 30))
    timeout --kill-after=5 "$cap" "${ON_LOAD[@]}" python3 "$ROOT/bench/connload_client.py" \
        --mode "$scenario" --port "$port" --pid "$pid" --n "$N" --batch "$BATCH" --waves "$waves" \
        --settle "$SETTLE" --drain "$DRAIN" --label "$name" \
        --upstream-ports "$PORT_HTTP_BACKEND,$PORT_WS_BACKEND" >>"$TSV" 2>"$WORK/client-$name-$scenario.log" &
    local cpid=$!
    PIDS+=("$cpid")
    wait "$cpid" || rc=$?
    forget "$cpid"
    printf '%s\t%s\t%s\n' "$name" "$scenario" "$(thread_summary "$pid")" >>"$THREADS_TSV"
    alive "$pid" || { cat "$WORK/$name-$scenario.log" >&2; die "$name exited during the $scenario run"; }
    stop "$pid"
    [[ -s $WORK/client-$name-$scenario.log ]] && cat "$WORK/client-$name-$scenario.log" >&2
    ((rc == 0)) || die "client failed for $name $scenario (exit $rc); see $WORK/client-$name-$scenario.log"
    awk -F'\t' -v p="$name" -v s="$scenario" '$1 == p && $2 == s {
        printf "connload: %-7s %-5s wave %d: %d/%d open, RSS %.1f -> %.1f MiB (%.2f KiB/conn), after close %.1f MiB; proxy-side %d, upstream %d\n",
            p, s, $3, $5, $4, $7 / 1024, $8 / 1024, ($8 - $7) / ($5 ? $5 : 1), $9 / 1024, $11, $12 }' "$TSV" >&2
}

T_START=$(date +%s)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
awk '{exit !($1 > 1.0)}' /proc/loadavg &&
    log "warning: load average is $LOADAVG_START: other work (a cargo build?) will add noise to timings, less to RSS"
log "N=$N per scenario (batches of $BATCH), settle ${SETTLE}s, drain ${DRAIN}s, keep-alive waves $WAVES; scenarios: $SCENARIOS"
i=0
for scenario in $SCENARIOS; do
    if ((i % 2 == 0)); then order=(haproxy usher); else order=(usher haproxy); fi
    for name in "${order[@]}"; do run_one "$name" "$scenario"; done
    i=$((i + 1))
done
ELAPSED=$(($(date +%s) - T_START))

# --- report ----------------------------------------------------------------------
scenario_title() {
    case $1 in
        http1) echo "HTTP/1.1 keep-alive" ;;
        ws) echo "WebSocket" ;;
        h2c) echo "HTTP/2 cleartext (h2c)" ;;
    esac
}

main_table=$(
    echo "| scenario | proxy | open | baseline MiB | loaded MiB | KiB per connection | after close MiB | usher/HAProxy (KiB per connection) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for s in $SCENARIOS; do
        awk -F'\t' -v s="$s" -v title="$(scenario_title "$s")" '
            $2 == s && $3 == 1 { ok[$1] = $5; n[$1] = $4; b[$1] = $7; l[$1] = $8; a[$1] = $9
                                 k[$1] = $5 > 0 ? ($8 - $7) / $5 : 0 }
            END {
                r = (k["haproxy"] > 0) ? sprintf("**%.2f×**", k["usher"] / k["haproxy"]) : "–"
                split("haproxy usher", ps, " ")
                for (i = 1; i <= 2; i++) {
                    p = ps[i]
                    if (!(p in ok)) continue
                    printf "| %s | %s | %d/%d | %.1f | %.1f | %.2f | %.1f | %s |\n", title, (p == "usher" ? "usher" : "HAProxy"),
                        ok[p], n[p], b[p] / 1024, l[p] / 1024, k[p], a[p] / 1024, (p == "usher" ? r : "")
                }
            }' "$TSV"
    done
)

waves_table=
if [[ " $SCENARIOS " == *" http1 "* ]]; then
    waves_table=$(
        echo "| proxy | wave | loaded MiB | (loaded - baseline) / N, KiB | after close MiB | after close - baseline, MiB |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
        awk -F'\t' '$2 == "http1" {
            printf "| %s | %d | %.1f | %.2f | %.1f | %+.1f |\n", ($1 == "usher" ? "usher" : "HAProxy"), $3, $8 / 1024,
                ($5 > 0 ? ($8 - $7) / $5 : 0), $9 / 1024, ($9 - $7) / 1024 }' "$TSV" | sort -t'|' -k2,2 -k3,3n
    )
fi

detail_table=$(
    echo "| proxy | scenario | wave | failed | open time s | proxy fds loaded | proxy-side client conns loaded / after | proxy->backend conns loaded / after |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' 'NR > 1 { printf "| %s | %s | %d | %d | %.2f | %d | %d / %d | %d / %d |\n", ($1 == "usher" ? "usher" : "HAProxy"),
        $2, $3, $6, $15, $10, $11, $13, $12, $14 }' "$TSV"
)

short_check=$(awk -F'\t' 'NR > 1 && $3 == 1 && $11 < $5 { printf "%s %s: the proxy held %d of %d open connections at \"loaded\"; ", $1, $2, $11, $5 }' "$TSV")
failed_total=$(awk -F'\t' 'NR > 1 {s += $6} END {print s + 0}' "$TSV")

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
git_rev="work tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || git_rev+=" with uncommitted changes"
CMDLINE="$(env | grep -E '^CONNLOAD_[A-Z_]+=' | sort | tr '\n' ' ' || true)bench/connload.sh"

{
    echo "# Connection load: memory per idle connection, usher-balancer vs HAProxy"
    echo
    echo "Generated by \`$CMDLINE\` on $(date -u '+%Y-%m-%d %H:%M UTC') in ${ELAPSED}s. See bench/README.md (\"Connection load\") for the method."
    echo
    if [[ -n $DEBUG_WARNING ]]; then
        echo "> **Warning:** $DEBUG_WARNING."
        echo
    fi
    echo "N = $N connections per scenario, opened in batches of up to $BATCH; \"loaded\" is read ${SETTLE}s after the last one opened, \"after close\" ${DRAIN}s after all were closed. RSS is VmRSS of the proxy process (/proc/PID/status); KiB per connection = (loaded - baseline) / connections open."
    echo
    echo "$main_table"
    if [[ -n $waves_table ]]; then
        echo
        echo "## Repeated waves (HTTP/1.1 keep-alive, same process)"
        echo
        echo "Open N, wait, read, close all, wait, read; $WAVES times on one process. Baseline as in the first wave."
        echo
        echo "$waves_table"
    fi
    echo
    echo "## Details"
    echo
    echo "Connection counts are ESTABLISHED sockets in /proc/net/tcp: the proxy's side of client connections (local port = the listener) and the proxy's side of upstream connections (remote port = a backend). Upstream sockets are part of each proxy's per-connection cost: one per WebSocket tunnel; for HTTP, whatever idle upstream connections the proxy keeps after one request per client connection."
    echo
    echo "$detail_table"
    [[ -n $short_check ]] && { echo; echo "**Check:** $short_check"; }
    ((failed_total > 0)) && { echo; echo "**$failed_total connection(s) failed** over the run (client logs in the work directory)."; }
    echo
    echo "## Setup"
    echo
    echo "- HAProxy: \`nbthread 1\`, \`maxconn $HAPROXY_MAXCONN\`, \`mode http\`, keep-alive (no \`http-server-close\`), client/server/tunnel/http-keep-alive timeouts 600s; h2c on a second \`bind ... proto h2\`."
    echo "- usher: two listeners (HTTP/1.1 + h2c on the second, hyper's auto detection), \`headerReadTimeout: 600s\`, $USHER_IDLE; pools at their defaults (upstream \`idle: 4s\`), no admin listener, \`USHER_LOG=info\`."
    echo "- Both proxies pinned to core $PROXY_CPU (\`taskset\`), client and backends to core $LOAD_CPU; open-file limit $NOFILE."
    echo "- Backends: HTTP: $HTTP_BACKEND_DESC; WebSocket: bench/connload_ws_backend.py (echo)."
    echo "- Threads after each run:"
    awk -F'\t' '{printf "  - %s %s: %s\n", $1, $2, $3}' "$THREADS_TSV"
    echo
    echo "## Machine"
    echo
    echo "- CPU: $cpu_model, $NCPU cores; memory $mem; kernel $(uname -sr)"
    echo "- Load average before: $LOADAVG_START; after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- $(haproxy -v 2>&1 | head -n 1)"
    echo "- $("$USHER_BIN" --version) ($PROFILE build), $git_rev; $(python3 --version)"
} >"$RESULTS"

echo
[[ -n $DEBUG_WARNING ]] && echo "WARNING: $DEBUG_WARNING" && echo
echo "$main_table"
if [[ -n $waves_table ]]; then
    echo
    echo "$waves_table"
fi
echo
echo "$detail_table"
[[ -n $short_check ]] && echo && echo "check: $short_check"
echo
echo "results: $RESULTS; configs, logs and raw TSV: $WORK (${ELAPSED}s)"
