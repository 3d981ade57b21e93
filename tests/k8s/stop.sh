#!/usr/bin/env bash
# Stops what tests/k8s/start.sh DIR started: the watchdog, kube-controller-manager,
# kube-apiserver and etcd (SIGTERM, then SIGKILL after 3 s). Leaves DIR in place.
# A pid is only signalled while its command line still names DIR, so a stale
# pid file never hits an unrelated process.
set -euo pipefail
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
[ -d "$1" ] || exit 0
dir=$(cd "$1" && pwd)

ours() { # PID: is it alive and one of DIR's processes?
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$dir"
}

pids=()
for name in watchdog controller-manager apiserver etcd; do
  [ -f "$dir/$name.pid" ] || continue
  pid=$(cat "$dir/$name.pid")
  # The watchdog runs this script itself: do not kill the caller.
  [ "$pid" = "$PPID" ] && continue
  if ours "$pid"; then
    kill "$pid" 2>/dev/null || true
    pids+=("$pid")
  fi
done
deadline=$((SECONDS + 3))
for pid in "${pids[@]}"; do
  while ours "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
done
exit 0
