#!/usr/bin/env bash
# Started (detached) by tests/k8s/start.sh: waits until OWNER_PID is gone, then
# stops the control plane in DIR and, when CLEANUP is 1, removes DIR.
#   watchdog.sh DIR OWNER_PID CLEANUP
set -uo pipefail
dir=$1 owner=$2 cleanup=${3:-0}
here=$(cd "$(dirname "$0")" && pwd)
while kill -0 "$owner" 2>/dev/null; do
  sleep 1
done
echo "owner $owner gone at $(date -u +%FT%TZ); stopping"
bash "$here/stop.sh" "$dir"
if [ "$cleanup" = 1 ]; then
  rm -rf -- "$dir"
fi
