#!/usr/bin/env bash
# Starts a real, throw-away Kubernetes control plane for integration tests:
# etcd + kube-apiserver + kube-controller-manager, all on 127.0.0.1 with free
# ports, every file under DIR.
#
#   tests/k8s/start.sh DIR        (stop it early with tests/k8s/stop.sh DIR)
#
# On success it prints one line `k8s ready: https://127.0.0.1:PORT` and leaves:
#   DIR/admin.kubeconfig  token of user `admin` (group system:masters)
#   DIR/ca.crt            CA of the apiserver's serving certificate
#   DIR/server            the apiserver URL
#   DIR/admin.token       the admin bearer token
#   DIR/*.pid, DIR/*.log  one per process (etcd, apiserver, controller-manager, watchdog)
#
# The processes never outlive their owner: a detached watchdog polls the pid
# in USHER_K8S_OWNER_PID (default: the caller, $PPID) every second and kills
# them once it is gone, also removing DIR when USHER_K8S_CLEANUP=1.
#
# Binaries: kube-apiserver and kube-controller-manager from
# ${USHER_K8S_BIN:-$HOME/.cache/usher/k8s/bin} (built by tests/k8s/build.sh),
# etcd from the same directory or from PATH (Debian's etcd-server).
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
mkdir -p "$1"
dir=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
owner="${USHER_K8S_OWNER_PID:-$PPID}"
cleanup="${USHER_K8S_CLEANUP:-0}"
bin="${USHER_K8S_BIN:-$HOME/.cache/usher/k8s/bin}"

t0=$(date +%s%N)
# Appends how long the start has taken so far to DIR/start.log.
phase() { echo "$(( ($(date +%s%N) - t0) / 1000000 )) ms: $*" >>"$dir/start.log"; }

fail() {
  echo "k8s start failed: $*" >&2
  exit 1
}

apiserver="$bin/kube-apiserver"
kcm="$bin/kube-controller-manager"
for b in "$apiserver" "$kcm"; do
  [ -x "$b" ] || fail "$b is missing; run tests/k8s/build.sh (or set USHER_K8S_BIN)"
done
if [ -x "$bin/etcd" ]; then
  etcd="$bin/etcd"
else
  etcd=$(command -v etcd) || fail "etcd is missing; run tests/k8s/build.sh (it installs Debian's etcd-server)"
fi
for tool in openssl curl python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is required"
done
kill -0 "$owner" 2>/dev/null || fail "owner pid $owner is not running"

# Everything started so far, killed again unless we reach the end.
started=()
ok=0
on_exit() {
  if [ "$ok" != 1 ]; then
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${started[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  fi
}
trap on_exit EXIT

# Prints the tail of NAME's log and fails.
died() {
  local name=$1
  shift
  echo "k8s start failed: $name $*; last lines of $dir/$name.log:" >&2
  tail -n 40 "$dir/$name.log" >&2 || true
  exit 1
}

# Waits up to SECS for COMMAND to succeed while NAME's process (PID) lives.
wait_for() {
  local name=$1 pid=$2 secs=$3
  shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || died "$name" "exited"
    [ "$SECONDS" -lt "$deadline" ] || died "$name" "not ready after ${secs}s"
    sleep 0.1
  done
}

# Runs NAME in the background, detached from our stdio, pid in DIR/NAME.pid.
spawn() {
  local name=$1
  shift
  "$@" </dev/null >"$dir/$name.log" 2>&1 &
  local pid=$!
  started+=("$pid")
  echo "$pid" >"$dir/$name.pid"
}

# Free loopback ports, all held at once so they differ from each other.
read -r etcd_port peer_port api_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
') || fail "could not pick free ports"

# --- certificates, keys, token -------------------------------------------
pki="$dir/pki"
mkdir -p "$pki"
# ECDSA P-256 everywhere: RSA key generation would cost about a second.
: >"$dir/openssl.log"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" >>"$dir/openssl.log" 2>&1; }
ec "$pki/ca.key" || died openssl "could not make the CA key"
openssl req -x509 -new -key "$pki/ca.key" -sha256 -days 3650 -out "$pki/ca.crt" -subj "/CN=usher-test-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" >>"$dir/openssl.log" 2>&1 ||
  died openssl "could not make the CA"
ec "$pki/apiserver.key" || died openssl "could not make the serving key"
openssl req -new -key "$pki/apiserver.key" -sha256 -out "$pki/apiserver.csr" -subj "/CN=kube-apiserver" \
  >>"$dir/openssl.log" 2>&1 || died openssl "could not make the serving CSR"
cat >"$pki/apiserver.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1
EOF
openssl x509 -req -sha256 -days 3650 -in "$pki/apiserver.csr" \
  -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" >>"$dir/openssl.log" 2>&1 ||
  died openssl "could not sign the serving certificate"
# Service-account token signing key (ES256).
ec "$pki/sa.key" || died openssl "could not make the service-account key"
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" >>"$dir/openssl.log" 2>&1 ||
  died openssl "could not extract the service-account public key"
cp "$pki/ca.crt" "$dir/ca.crt"
phase "certificates and keys made"

token=$(openssl rand -hex 24)
printf '%s\n' "$token" >"$dir/admin.token"
printf '%s,admin,admin,"system:masters"\n' "$token" >"$pki/tokens.csv"
chmod 600 "$pki"/*.key "$pki/tokens.csv" "$dir/admin.token"

server="https://127.0.0.1:$api_port"
printf '%s\n' "$server" >"$dir/server"
ca_data=$(base64 -w0 <"$dir/ca.crt")
cat >"$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: usher-test
  cluster:
    server: $server
    certificate-authority-data: $ca_data
users:
- name: admin
  user:
    token: $token
contexts:
- name: admin@usher-test
  context:
    cluster: usher-test
    user: admin
    namespace: default
current-context: admin@usher-test
EOF
chmod 600 "$dir/admin.kubeconfig"

# --- watchdog --------------------------------------------------------------
# Started first so that even a start that hangs is cleaned up with the owner.
# It reads the pid files, so it also catches processes started after it.
setsid nohup bash "$here/watchdog.sh" "$dir" "$owner" "$cleanup" \
  </dev/null >"$dir/watchdog.log" 2>&1 &
echo $! >"$dir/watchdog.pid"
started+=("$!")

# --- etcd ----------------------------------------------------------------
spawn etcd "$etcd" \
  --name usher-test \
  --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "usher-test=http://127.0.0.1:$peer_port" \
  --heartbeat-interval 10 \
  --election-timeout 100 \
  --log-level warn \
  --logger zap
etcd_pid=$!
wait_for etcd "$etcd_pid" 30 curl -fsS "http://127.0.0.1:$etcd_port/health"
phase "etcd healthy"

# --- kube-apiserver ------------------------------------------------------
spawn apiserver "$apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 \
  --secure-port "$api_port" \
  --insecure-port 0 \
  --cert-dir "$pki" \
  --tls-cert-file "$pki/apiserver.crt" \
  --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --token-auth-file "$pki/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --service-account-issuer https://kubernetes.default.svc \
  --api-audiences https://kubernetes.default.svc \
  --service-cluster-ip-range 10.0.0.0/24 \
  --endpoint-reconciler-type none \
  --disable-admission-plugins ServiceAccount \
  --profiling=false \
  --v 1
api_pid=$!
readyz() {
  curl -fsS --cacert "$dir/ca.crt" -H "Authorization: Bearer $token" "$server/readyz" | grep -qx ok
}
wait_for apiserver "$api_pid" 60 readyz
phase "kube-apiserver ready"

# --- kube-controller-manager ---------------------------------------------
spawn controller-manager "$kcm" \
  --kubeconfig "$dir/admin.kubeconfig" \
  --controllers serviceaccount,serviceaccount-token,deployment,replicaset,namespace,garbagecollector \
  --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" \
  --leader-elect=false \
  --use-service-account-credentials=false \
  --port 0 \
  --secure-port 0 \
  --profiling=false \
  --v 1
kcm_pid=$!
# The token controller gives `default` in `default` a token Secret once the
# service-account controllers run.
default_sa_has_token() {
  curl -fsS --cacert "$dir/ca.crt" -H "Authorization: Bearer $token" \
    "$server/api/v1/namespaces/default/serviceaccounts/default" | grep -q '"default-token-'
}
wait_for controller-manager "$kcm_pid" 60 default_sa_has_token
phase "kube-controller-manager ready"

ok=1
echo "k8s ready: $server"
