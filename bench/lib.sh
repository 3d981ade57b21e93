# shellcheck shell=bash
# Process and port helpers shared by bench/run.sh and bench/connload.sh.
# Source it after defining `die MESSAGE`; it keeps the pids it started in
# PIDS (for `kill_started` on exit) and the last one in LAST_PID.

PIDS=()
LAST_PID=

kill_started() { # SIGTERM everything `start` started, then SIGKILL what is left
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

start() { # start LOGFILE CMD...: CMD in the background, its pid in LAST_PID
    local logfile=$1; shift
    "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

alive() { # true while the process runs and is not a zombie
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ ${st%% *} != Z ]]
}

forget() { # drop PID from the list kill_started kills
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop() { # stop PID: SIGTERM, up to 5 s, then SIGKILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait_port PORT PID LOGFILE [SECONDS]: up to SECONDS (10) for PORT to accept
    local i limit=${4:-10}
    for ((i = 0; i < limit * 10; i++)); do
        port_open "$1" && return 0
        alive "$2" || { cat "$3" >&2; die "process $2 exited before listening on $1"; }
        sleep 0.1
    done
    cat "$3" >&2
    die "nothing listening on 127.0.0.1:$1 after $limit s"
}

http_status() { # http_status PORT [PATH]: status line of GET PATH (/), 5 s at most
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf "GET %s HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n" "$2" >&3
        head -n 1 <&3 | tr -d "\r"' _ "$1" "${2:-/}" || true
}

thread_summary() { # "N threads: 2x tokio-runtime-w, 1x usher-balancer"
    cat /proc/"$1"/task/*/comm 2>/dev/null | sort | uniq -c |
        awk '{n += $1; s = s (s ? ", " : "") $1 "x " $2} END {print n " threads: " s}'
}
