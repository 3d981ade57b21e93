#!/usr/bin/env bash
# Benchmark usher-balancer against HAProxy in the same run, on this machine.
#
#   bench/run.sh            full run (3 rounds x 10 s per proxy, 64 connections)
#   bench/run.sh --quick    short run (1 round x 3 s) to check that it works
#
# Four example-backend upstreams on 127.0.0.1, then each proxy in turn in front
# of them (HAProxy: balance leastconn, keep-alive and http-reuse always,
# nbthread 1; usher: one listener, leastConnections, no health check, no
# admin). The proxy is pinned to one core, wrk and the backends to another.
# Per proxy: requests/s, p50/p99 latency, proxy CPU time per request, peak RSS.
# Writes bench/results.md; see bench/README.md for the details and env knobs.
# All traffic stays on 127.0.0.1 and every load run is bounded in time.
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Environment (all optional):
  BENCH_DURATION     measured seconds per run          (10; --quick: 3)
  BENCH_CONNECTIONS  wrk connections                   (64)
  BENCH_WARMUP       warm-up seconds before each run   (3; --quick: 1)
  BENCH_ROUNDS       rounds, proxies alternating       (3; --quick: 1)
  BENCH_THREADS      wrk threads                       (1)
  BENCH_BODY_BYTES   backend response body size        (0 = a short line)
  BENCH_PORT_BASE    first port used on 127.0.0.1      (18400)
  BENCH_PROXY_CPU    core the proxy is pinned to       (0)
  BENCH_LOAD_CPU     core wrk and backends are pinned to (1)
  BENCH_RESULTS      markdown output file              (bench/results.md)
  BENCH_REV          benchmark this commit (git archive) instead of the work tree
  BENCH_NICE         niceness of proxy, wrk and backends (0; e.g. -10 on a busy machine)
  BENCH_PERF=1       add a profiling pass (perf stat syscalls/request, perf record usher)
  CARGO_TARGET_DIR   cargo target dir                  (~/.cache/usher/target)
EOF
}

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/usher/target}

if ((quick)); then d_dur=3 d_warm=1 d_rounds=1; else d_dur=10 d_warm=3 d_rounds=3; fi
DURATION=${BENCH_DURATION:-$d_dur}
DURATION=${DURATION%s}
WARMUP=${BENCH_WARMUP:-$d_warm}
WARMUP=${WARMUP%s}
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-1}
BODY_BYTES=${BENCH_BODY_BYTES:-0}
PORT_BASE=${BENCH_PORT_BASE:-18400}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results.md}
PERF=${BENCH_PERF:-0}
NICE=${BENCH_NICE:-0}
REV=${BENCH_REV:-}

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

for v in DURATION WARMUP ROUNDS CONNECTIONS THREADS BODY_BYTES PORT_BASE PROXY_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[[ $NICE =~ ^-?[0-9]+$ ]] || die "BENCH_NICE must be a number, got '$NICE'"
((DURATION > 0 && ROUNDS > 0 && CONNECTIONS > 0 && THREADS > 0)) || die "duration, rounds, connections and threads must be > 0"
((THREADS <= CONNECTIONS)) || die "BENCH_THREADS must not exceed BENCH_CONNECTIONS"
((DURATION <= 600 && WARMUP <= 600)) || die "runs are capped at 600 s"
NCPU=$(nproc --all 2>/dev/null || getconf _NPROCESSORS_ONLN)
if ((NCPU < 2)); then
    log "only $NCPU core: proxy and load share core 0 (figures will be pessimistic)"
    PROXY_CPU=0 LOAD_CPU=0
fi
((PROXY_CPU < NCPU && LOAD_CPU < NCPU)) || die "BENCH_PROXY_CPU/BENCH_LOAD_CPU must be below $NCPU"

# command prefixes: pinned to a core, at the chosen niceness (exec'd, so $! is the real pid)
ON_PROXY=(nice -n "$NICE" taskset -c "$PROXY_CPU")
ON_LOAD=(nice -n "$NICE" taskset -c "$LOAD_CPU")

BACKEND_PORTS=()
for i in 1 2 3 4; do BACKEND_PORTS+=($((PORT_BASE + i))); done
PROXY_PORT=$PORT_BASE

# --- tools -------------------------------------------------------------------
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v taskset >/dev/null || missing+=(util-linux)
[[ $PERF == 1 ]] && ! command -v perf >/dev/null && missing+=(linux-perf)
command -v cargo >/dev/null || die "cargo not found"
if ((${#missing[@]} > 0)); then
    sudo=()
    ((EUID == 0)) || sudo=(sudo)
    log "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
CLK_TCK=$(getconf CLK_TCK)

# --- build -------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/usher-bench.XXXXXX")
SRC=$ROOT
if [[ -n $REV ]]; then
    # a committed revision, exported apart from the work tree (which may be mid-edit)
    REV_ID=$(git -C "$ROOT" rev-parse --short --verify "$REV^{commit}") || die "BENCH_REV: no such commit: $REV"
    SRC=$WORK/src
    mkdir -p "$SRC"
    git -C "$ROOT" archive --format=tar "$REV_ID" | tar -x -C "$SRC"
    log "building $REV ($REV_ID) from git, not the work tree"
fi
log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$SRC" && cargo build --release --quiet -p usher-balancer -p usher-examples) || die "cargo build failed in $SRC"
USHER_BIN=$CARGO_TARGET_DIR/release/usher-balancer
BACKEND_BIN=$CARGO_TARGET_DIR/release/example-backend
[[ -x $USHER_BIN && -x $BACKEND_BIN ]] || die "release binaries not found in $CARGO_TARGET_DIR/release"
# copies, so a concurrent cargo build in the same target dir cannot swap them mid-run
cp "$USHER_BIN" "$WORK/usher-balancer" && USHER_BIN=$WORK/usher-balancer
cp "$BACKEND_BIN" "$WORK/example-backend" && BACKEND_BIN=$WORK/example-backend

# --- priority ----------------------------------------------------------------
# With sched autogroup (per-session scheduling groups), a process's nice only
# counts inside its own session; against other sessions the session's
# autogroup nice is what matters. So BENCH_NICE also sets this session's
# autogroup nice for the run, and puts the old value back on exit.
AUTOGROUP_OLD=
if ((NICE != 0)) && [[ -w /proc/self/autogroup ]]; then
    AUTOGROUP_OLD=$(sed -n 's/.* nice \(-\{0,1\}[0-9]*\)$/\1/p' /proc/self/autogroup)
    if echo "$NICE" >/proc/self/autogroup 2>/dev/null; then
        log "session autogroup nice: $AUTOGROUP_OLD -> $NICE for the run"
    else
        log "warning: cannot set the autogroup nice; BENCH_NICE only ranks our processes among this session's"
        AUTOGROUP_OLD=
    fi
fi

# --- process bookkeeping -----------------------------------------------------
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    kill_started
    [[ $SRC == "$WORK/src" ]] && rm -rf "$SRC"
    [[ -n $AUTOGROUP_OLD ]] && { echo "$AUTOGROUP_OLD" >/proc/self/autogroup; } 2>/dev/null
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cpu_ticks() { # utime+stime of a process, all threads, in clock ticks
    local st
    st=$(<"/proc/$1/stat")
    st=${st##*) }
    # shellcheck disable=SC2086
    set -- $st # fields from 3 (state): utime is field 14, stime 15
    echo $((${12} + ${13}))
}

vm_hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

core_busy() { # "busy total" jiffies of one core from /proc/stat
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

for p in "$PROXY_PORT" "${BACKEND_PORTS[@]}"; do
    port_open "$p" && die "127.0.0.1:$p is already in use (set BENCH_PORT_BASE)"
done

# --- configs -----------------------------------------------------------------
LUA=$WORK/report.lua
cat >"$LUA" <<'EOF'
-- Prints one parseable line at the end of a wrk run (latencies in µs).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
EOF

HAPROXY_CFG=$WORK/haproxy.cfg
{
    cat <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:$PROXY_PORT
    # the same header work usher does on every request
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    unique-id-format %[uuid]
    unique-id-header X-Request-Id
    http-response set-header X-Request-Id %[unique-id]
    default_backend pool

backend pool
    balance leastconn
EOF
    for i in "${!BACKEND_PORTS[@]}"; do
        echo "    server b$((i + 1)) 127.0.0.1:${BACKEND_PORTS[$i]}"
    done
} >"$HAPROXY_CFG"
haproxy -c -q -f "$HAPROXY_CFG" || die "haproxy rejected $HAPROXY_CFG"

USHER_CFG=$WORK/usher.yaml
{
    cat <<EOF
listeners:
  - name: bench
    bind: "127.0.0.1:$PROXY_PORT"
shutdown:
  drainTimeout: 1s
routes:
  - pathPrefix: /
    pool: bench
pools:
  bench:
    balance: leastConnections
    endpoints:
      static:
EOF
    for p in "${BACKEND_PORTS[@]}"; do echo "        - \"127.0.0.1:$p\""; done
} >"$USHER_CFG"
"$USHER_BIN" check -c "$USHER_CFG" >/dev/null || die "usher-balancer rejected $USHER_CFG"

# --- backends ----------------------------------------------------------------
for p in "${BACKEND_PORTS[@]}"; do
    start "$WORK/backend-$p.log" "${ON_LOAD[@]}" "$BACKEND_BIN" --listen "127.0.0.1:$p" --body-bytes "$BODY_BYTES"
    wait_port "$p" "$LAST_PID" "$WORK/backend-$p.log"
done
log "4 backends on 127.0.0.1:${BACKEND_PORTS[0]}-${BACKEND_PORTS[3]} (core $LOAD_CPU)"

# --- runs --------------------------------------------------------------------
RESULTS_TSV=$WORK/results.tsv
printf 'proxy\tround\trps\tp50_us\tp99_us\tcpu_us_req\tcpu_pct\trss_kb\trequests\terrors\tload_busy_pct\tthreads\tforeign_pct\n' >"$RESULTS_TSV"

wrk_run() { # wrk_run SECONDS OUTFILE
    # in the background + wait, so that a signal's trap runs at once, not after wrk
    timeout --kill-after=5 $(($1 + 30)) "${ON_LOAD[@]}" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$1"s --latency -s "$LUA" "http://127.0.0.1:$PROXY_PORT/" >"$2" 2>&1 &
    local wpid=$! rc=0
    PIDS+=("$wpid")
    wait "$wpid" || rc=$?
    forget "$wpid"
    ((rc == 0)) || { cat "$2" >&2; die "wrk failed (exit $rc)"; }
}

start_proxy() { # start_proxy NAME LOGFILE: start, wait for it, check GET /; pid in LAST_PID
    local name=$1 logf=$2 status
    case $name in
        haproxy) start "$logf" "${ON_PROXY[@]}" haproxy -db -f "$HAPROXY_CFG" ;;
        usher) start "$logf" env USHER_LOG=info USHER_LOG_FORMAT=json \
            "${ON_PROXY[@]}" "$USHER_BIN" run -c "$USHER_CFG" ;;
    esac
    wait_port "$PROXY_PORT" "$LAST_PID" "$logf"
    local comm
    comm=$(<"/proc/$LAST_PID/comm")
    [[ $comm == haproxy || $comm == usher-balance* ]] || die "pid $LAST_PID is '$comm', not the proxy: CPU figures would be wrong"
    status=$(http_status "$PROXY_PORT")
    [[ $status == "HTTP/1.1 200"* ]] || { cat "$logf" >&2; die "$name answered '$status' to GET /"; }
}

run_proxy() { # run_proxy NAME ROUND
    local name=$1 round=$2 pid
    start_proxy "$name" "$WORK/$1-$2.log"
    pid=$LAST_PID

    if ((WARMUP > 0)); then wrk_run "$WARMUP" "$WORK/wrk-$name-$round-warmup.txt"; fi

    local out=$WORK/wrk-$name-$round.txt c0 c1 b0 b1 p0 p1 t0 t1
    c0=$(cpu_ticks "$pid")
    b0=$(core_busy "$LOAD_CPU")
    p0=$(core_busy "$PROXY_CPU")
    t0=$(date +%s%N)
    wrk_run "$DURATION" "$out"
    t1=$(date +%s%N)
    p1=$(core_busy "$PROXY_CPU")
    b1=$(core_busy "$LOAD_CPU")
    c1=$(cpu_ticks "$pid")
    local threads rss
    threads=$(thread_summary "$pid")
    rss=$(vm_hwm_kb "$pid")
    stop "$pid"

    local line
    line=$(grep '^BENCH ' "$out") || { cat "$out" >&2; die "no BENCH line in $out"; }
    local requests duration_us errors_connect errors_read errors_write errors_status errors_timeout p50_us p99_us
    local kv
    for kv in ${line#BENCH }; do
        case ${kv%%=*} in
            requests | duration_us | errors_connect | errors_read | errors_write | errors_status | errors_timeout | p50_us | p99_us)
                printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
        esac
    done
    ((requests > 0)) || die "$name completed no request"
    local errors=$((errors_connect + errors_read + errors_write + errors_status + errors_timeout))
    awk -v n="$name" -v r="$round" -v req="$requests" -v dus="$duration_us" -v p50="$p50_us" -v p99="$p99_us" \
        -v dc="$((c1 - c0))" -v hz="$CLK_TCK" -v wall_ns="$((t1 - t0))" -v rss="$rss" -v err="$errors" \
        -v b0="$b0" -v b1="$b1" -v p0="$p0" -v p1="$p1" -v th="$threads" 'BEGIN {
            split(b0, x, " "); split(b1, y, " ")
            busy = (y[2] - x[2]) > 0 ? 100 * (y[1] - x[1]) / (y[2] - x[2]) : 0
            split(p0, x, " "); split(p1, y, " ")
            pbusy = (y[2] - x[2]) > 0 ? 100 * (y[1] - x[1]) / (y[2] - x[2]) : 0
            own = 100 * (dc / hz) / (wall_ns / 1e9)
            foreign = pbusy - own; if (foreign < 0) foreign = 0
            printf "%s\t%d\t%.1f\t%d\t%d\t%.2f\t%.1f\t%d\t%d\t%d\t%.1f\t%s\t%.1f\n", n, r, req / (dus / 1e6), p50, p99,
                dc / hz * 1e6 / req, own, rss, req, err, busy, th, foreign
        }' >>"$RESULTS_TSV"
    tail -n 1 "$RESULTS_TSV" | awk -F'\t' '{printf "bench: round %s %-7s %9.0f req/s  p50 %5.2f ms  p99 %5.2f ms  %6.2f µs CPU/req  proxy CPU %5.1f%%  RSS %5.1f MiB  errors %d  load core %4.1f%% busy  other work on proxy core %4.1f%%  (%s)\n",
        $2, $1, $3, $4 / 1000, $5 / 1000, $6, $7, $8 / 1024, $10, $11, $13, $12}' >&2
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
awk '{exit !($1 > 1.0)}' /proc/loadavg &&
    log "warning: load average is $LOADAVG_START before the runs: other work on this machine will add noise"
log "$ROUNDS round(s): ${WARMUP}s warm-up + ${DURATION}s measured, $CONNECTIONS connections, $THREADS wrk thread(s); proxy on core $PROXY_CPU"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order=(haproxy usher); else order=(usher haproxy); fi
    for name in "${order[@]}"; do run_proxy "$name" "$round"; done
done

# --- optional profiling pass (BENCH_PERF=1) ----------------------------------
# One more run per proxy, not counted above: perf stat counts the proxy's
# syscalls per request, perf record samples where usher's CPU goes.
PERF_SECTION=
if [[ $PERF == 1 ]]; then
    SYSCALLS=(read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl futex accept4 connect close)
    events=raw_syscalls:sys_enter
    for sc in "${SYSCALLS[@]}"; do events+=",syscalls:sys_enter_$sc"; done
    perf_rows=()
    for name in haproxy usher; do
        start_proxy "$name" "$WORK/$name-perf.log"
        pid=$LAST_PID
        ((WARMUP > 0)) && wrk_run "$WARMUP" "$WORK/wrk-$name-perf-warmup.txt"

        taskset -c "$LOAD_CPU" perf stat -x, -e "$events" -p "$pid" -o "$WORK/perf-stat-$name.csv" &
        ppid=$!
        PIDS+=("$ppid")
        sleep 0.5
        wrk_run "$DURATION" "$WORK/wrk-$name-perf-stat.txt"
        kill -INT "$ppid" 2>/dev/null || true
        wait "$ppid" 2>/dev/null || true
        forget "$ppid"
        req=$(grep -o 'requests=[0-9]*' "$WORK/wrk-$name-perf-stat.txt" | cut -d= -f2)
        row=$(awk -F, -v req="$req" -v n="$name" '
            $3 ~ /^raw_syscalls:sys_enter$/ { total = $1 }
            $3 ~ /sys_enter_(read|readv|recvfrom|recvmsg)$/ { rd += $1 }
            $3 ~ /sys_enter_(write|writev|sendto|sendmsg)$/ { wr += $1 }
            $3 ~ /sys_enter_epoll_(p)?wait$/ { ew += $1 }
            $3 ~ /sys_enter_epoll_ctl$/ { ec += $1 }
            $3 ~ /sys_enter_futex$/ { fu += $1 }
            END { printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |", n, total / req, rd / req, wr / req,
                      ew / req, ec / req, fu / req, (total - rd - wr - ew - ec - fu) / req }' "$WORK/perf-stat-$name.csv")
        perf_rows+=("$row")

        taskset -c "$LOAD_CPU" perf record -q -F 999 --call-graph dwarf,16384 -p "$pid" -o "$WORK/perf-$name.data" 2>"$WORK/perf-record-$name.log" &
        ppid=$!
        PIDS+=("$ppid")
        sleep 0.5
        wrk_run "$DURATION" "$WORK/wrk-$name-perf-record.txt"
        kill -INT "$ppid" 2>/dev/null || true
        wait "$ppid" 2>/dev/null || true
        forget "$ppid"
        perf report -i "$WORK/perf-$name.data" --no-children --sort dso --stdio -g none 2>/dev/null |
            awk '/^ *[0-9.]+%/ {printf "%s %s; ", $1, $2}' >"$WORK/perf-$name-dso.txt" || true
        if [[ $name == usher ]]; then
            perf report -i "$WORK/perf-usher.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
                awk '/^ *[0-9.]+%/ {sub(/ +- +- *$/, ""); sub(/ +$/, ""); print}' | head -n 40 >"$WORK/perf-usher-self.txt" || true
            # self time inside the usher binary, by crate (first path segment of the symbol)
            perf report -i "$WORK/perf-usher.data" --no-children --dsos usher-balancer --sort symbol --stdio -g none 2>/dev/null |
                awk '/^ *[0-9.]+%/ {
                    pct = $1; sub(/%/, "", pct)
                    sym = $0; sub(/^ *[0-9.]+% +\[\.\] +/, "", sym); sub(/^</, "", sym)
                    split(sym, parts, "::"); crate = parts[1]; sub(/^&(mut )?/, "", crate)
                    t[crate] += pct
                } END { for (c in t) printf "%6.2f%%  %s\n", t[c], c }' | sort -rn | head -n 12 >"$WORK/perf-usher-crates.txt" || true
        fi
        stop "$pid"
    done
    PERF_SECTION=$(
        echo "## Profile (BENCH_PERF=1, a separate run per proxy)"
        echo
        echo "Syscalls by the proxy per request (perf stat tracepoints; read = read/readv/recvfrom/recvmsg, write = write/writev/sendto/sendmsg):"
        echo
        echo "| proxy | all | read | write | epoll_wait | epoll_ctl | futex | other |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        printf '%s\n' "${perf_rows[@]}"
        echo
        echo "CPU by binary (perf record, cpu-clock samples, share of each proxy's own samples):"
        echo
        echo "- HAProxy: $(cat "$WORK/perf-haproxy-dso.txt" 2>/dev/null)"
        echo "- usher: $(cat "$WORK/perf-usher-dso.txt" 2>/dev/null)"
        echo
        echo "usher-balancer's own code by crate (self time, share of all usher samples):"
        echo
        echo '```'
        cat "$WORK/perf-usher-crates.txt" 2>/dev/null
        echo '```'
        echo
        echo "usher top symbols (self time):"
        echo
        echo '```'
        head -n 25 "$WORK/perf-usher-self.txt" 2>/dev/null
        echo '```'
    )
fi

# --- report ------------------------------------------------------------------
median() { # median PROXY COLUMN
    awk -F'\t' -v n="$1" -v c="$2" 'NR > 1 && $1 == n {print $c}' "$RESULTS_TSV" | sort -g |
        awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
maxcol() { awk -F'\t' -v n="$1" -v c="$2" 'NR > 1 && $1 == n && $c > m {m = $c} END {print m + 0}' "$RESULTS_TSV"; }
sumcol() { awk -F'\t' -v n="$1" -v c="$2" 'NR > 1 && $1 == n {s += $c} END {print s + 0}' "$RESULTS_TSV"; }

row() { # row LABEL HAPROXY USHER FORMAT [SUFFIX]
    awk -v l="$1" -v h="$2" -v u="$3" -v f="$4" -v s="${5:-}" 'BEGIN {
        r = h > 0 ? sprintf("%.2f×", u / h) : "–"
        printf "| %s | " f " | " f " | %s%s |\n", l, h, u, r, s
    }'
}

h_cpu=$(median haproxy 6) u_cpu=$(median usher 6)
ratio_cpu=$(awk -v h="$h_cpu" -v u="$u_cpu" 'BEGIN {printf "%.2f", u / h}')
verdict=$(awk -v r="$ratio_cpu" 'BEGIN {print (r <= 1.5 ? "within" : "OVER")}')
usher_threads=$(awk -F'\t' 'NR > 1 && $1 == "usher" {print $12; exit}' "$RESULTS_TSV")
haproxy_threads=$(awk -F'\t' 'NR > 1 && $1 == "haproxy" {print $12; exit}' "$RESULTS_TSV")
workers=$(grep -Eo '[0-9]+x tokio-(rt-worker|runtime-w)' <<<"$usher_threads" | cut -dx -f1 || true)

table=$(
    echo "| metric (median of $ROUNDS round(s)) | HAProxy | usher | usher/HAProxy |"
    echo "| --- | ---: | ---: | ---: |"
    row "**proxy CPU µs per request**" "$h_cpu" "$u_cpu" "%.2f" " (target ≤ 1.5×: $verdict)"
    row "requests/s" "$(median haproxy 3)" "$(median usher 3)" "%.0f"
    row "p50 latency (ms)" "$(median haproxy 4 | awk '{print $1 / 1000}')" "$(median usher 4 | awk '{print $1 / 1000}')" "%.3f"
    row "p99 latency (ms)" "$(median haproxy 5 | awk '{print $1 / 1000}')" "$(median usher 5 | awk '{print $1 / 1000}')" "%.3f"
    row "proxy CPU use (% of its core)" "$(median haproxy 7)" "$(median usher 7)" "%.1f"
    row "peak RSS, VmHWM (MiB, max)" "$(maxcol haproxy 8 | awk '{print $1 / 1024}')" "$(maxcol usher 8 | awk '{print $1 / 1024}')" "%.1f"
    row "load core busy (%)" "$(median haproxy 11)" "$(median usher 11)" "%.1f"
    row "other work on the proxy core (%)" "$(median haproxy 13)" "$(median usher 13)" "%.1f"
    echo "| errors (all rounds) | $(sumcol haproxy 10) | $(sumcol usher 10) | |"
)

rounds_table=$(
    echo "| round | proxy | req/s | p50 ms | p99 ms | CPU µs/req | proxy CPU % | RSS MiB | errors | load core busy % | other work on proxy core % |"
    echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' 'NR > 1 {printf "| %d | %s | %.0f | %.3f | %.3f | %.2f | %.1f | %.1f | %d | %.1f | %.1f |\n", $2, $1, $3, $4 / 1000, $5 / 1000, $6, $7, $8 / 1024, $10, $11, $13}' "$RESULTS_TSV"
)

round_ratios=$(awk -F'\t' 'NR > 1 {c[$1, $2] = $6; if ($2 > m) m = $2}
    END {for (r = 1; r <= m; r++) if (c["haproxy", r] > 0) printf "%s%.2f×", (r > 1 ? ", " : ""), c["usher", r] / c["haproxy", r]}' "$RESULTS_TSV")
noisy=$(awk -F'\t' 'NR > 1 && $13 > 10 {n++} END {print n + 0}' "$RESULTS_TSV")
CMDLINE="$(env | grep -E '^BENCH_[A-Z_]+=' | sort | tr '\n' ' ' || true)bench/run.sh"
((quick)) && CMDLINE+=" --quick"
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
if [[ -n $REV ]]; then
    git_rev="commit $REV_ID (BENCH_REV=$REV)" git_dirty=
else
    git_rev="work tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    git_dirty=$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo " with uncommitted changes")
fi

{
    echo "# usher-balancer vs HAProxy"
    echo
    echo "Generated by \`$CMDLINE\` on $(date -u '+%Y-%m-%d %H:%M UTC'). See bench/README.md for the method."
    echo
    echo "$table"
    echo
    echo "Headline: usher uses **${ratio_cpu}×** HAProxy's CPU per request (target ≤ 1.5×). Per round: $round_ratios."
    if ((noisy > 0)); then
        echo
        echo "**Noisy:** in $noisy of $((2 * ROUNDS)) measured runs other work took over 10 % of the proxy's core (last column of the rounds table); requests/s and latency are not comparable across those runs, CPU per request less affected."
    fi
    echo
    echo "## Setup"
    echo
    echo "- Load: wrk, $THREADS thread(s), $CONNECTIONS keep-alive connections, ${WARMUP}s warm-up then ${DURATION}s measured, $ROUNDS round(s) alternating which proxy goes first; GET / through the proxy to 4 example-backend upstreams (body: ${BODY_BYTES} bytes, 0 = a short line)."
    echo "- Pinning: proxy on core $PROXY_CPU; wrk and the 4 backends on core $LOAD_CPU (\`taskset\`); niceness $NICE${AUTOGROUP_OLD:+, session autogroup nice $NICE}."
    echo "- HAProxy: \`nbthread 1\`, \`balance leastconn\`, \`option http-keep-alive\`, \`http-reuse always\`, plus X-Forwarded-For/-Proto/-Host and an X-Request-Id (request and response) so it does the same header work as usher; no logging."
    echo "- usher: one listener, pool of 4 static endpoints, \`leastConnections\`, no health check, no admin listener, defaults otherwise (outlier detection and retries on)."
    echo "- Threads seen after the measured run: usher: ${usher_threads:-?}; HAProxy: ${haproxy_threads:-?}."
    echo "- Tokio worker threads in usher: ${workers:-unknown} (TOKIO_WORKER_THREADS unset; tokio sizes the pool with available_parallelism, which follows the taskset mask)."
    echo
    echo "## Machine"
    echo
    echo "- CPU: $cpu_model, $NCPU cores (nproc: $(nproc)); memory $mem"
    echo "- Kernel: $(uname -sr)"
    echo "- Load average (1/5/15 min) before the runs: $LOADAVG_START; after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- $(haproxy -v 2>&1 | head -n 1)"
    echo "- $(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//')"
    echo "- $("$USHER_BIN" --version), $git_rev$git_dirty; $(rustc --version 2>/dev/null || echo rustc unknown)"
    echo
    echo "## Rounds"
    echo
    echo "$rounds_table"
    if [[ -n $PERF_SECTION ]]; then
        echo
        echo "$PERF_SECTION"
    fi
} >"$RESULTS"

echo
echo "$table"
echo
echo "usher/HAProxy CPU per request: ${ratio_cpu}× (target ≤ 1.5×: $verdict); per round: $round_ratios"
((noisy > 0)) && echo "noisy: in $noisy of $((2 * ROUNDS)) runs other work took > 10 % of the proxy core"
echo "usher threads: ${usher_threads:-?}"
if [[ -n $PERF_SECTION ]]; then
    echo
    echo "$PERF_SECTION"
fi
echo "results: $RESULTS; raw wrk output and logs: $WORK"
