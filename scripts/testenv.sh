#!/usr/bin/env bash
# Local test environment: a real kube-apiserver + etcd (built from the Go module
# proxy), kubectl and helm of matching versions, and moto's AWS emulators.
#
#   scripts/testenv.sh build    build/install what is missing into the cache
#   scripts/testenv.sh up [--node]
#                               build if needed, start everything, write the env file;
#                               --node adds a real node (containerd, kubelet, controller
#                               manager, scheduler, local images): scripts/testenv-node.sh
#   scripts/testenv.sh down     stop exactly what `up` started (by PID), undo the node's
#                               host changes and check that nothing is left, remove state
#   scripts/testenv.sh status   show what runs
#   scripts/testenv.sh restart-kube
#                               stop kube-apiserver and etcd (SIGTERM, by PID) and start
#                               them again with the same ports and data (reliability tests)
#
# The cache (TCC_CACHE_DIR, default .testenv/cache) is keyed by version, so a
# second `up` starts in seconds. Runtime state lives in TCC_STATE_DIR (default
# .testenv/run); its env file is what tests and developers source.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KUBE_VERSION=v1.37.2        # newest release that builds here and k8s-openapi 0.29 covers (feature v1_37)
ETCD_VERSION=v3.7.0         # the etcd k8s.io/kubernetes v1.37.2 pins
HELM_VERSION=v3.22.0
MOTO_VERSION=5.2.5
CFN_LINT_VERSION=1.58.0

CACHE_DIR=${TCC_CACHE_DIR:-$ROOT/.testenv/cache}
STATE_DIR=${TCC_STATE_DIR:-$ROOT/.testenv/run}
K8S_BIN=$CACHE_DIR/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION/bin
HELM_BIN=$CACHE_DIR/helm-$HELM_VERSION/bin
PROMETHEUS_VERSION=v0.316.0   # Prometheus 3.x's Go module version
PROMTOOL_BIN=$CACHE_DIR/promtool-$PROMETHEUS_VERSION/bin
GRPCURL_VERSION=v1.9.4
GRPCURL_BIN=$CACHE_DIR/grpcurl-$GRPCURL_VERSION/bin
MOTO_VENV=$CACHE_DIR/moto-$MOTO_VERSION
CFN_LINT_VENV=$CACHE_DIR/cfn-lint-$CFN_LINT_VERSION
ENV_FILE=$STATE_DIR/env

log() { printf '[testenv] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=scripts/testenv-node.sh
source "$ROOT/scripts/testenv-node.sh"

# ---------------------------------------------------------------- build ------

# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every staging
# module with ./staging/src/k8s.io/<name>. A wrapper module pins the same
# modules at their published v0.Y.Z tags instead (DESIGN.md §9). Written once;
# every Kubernetes binary builds from it.
k8s_wrapper_module() {
  local work=$CACHE_DIR/build/k8s-$KUBE_VERSION
  if [[ -f $work/.ready ]]; then printf '%s' "$work"; return; fi
  command -v go >/dev/null || die "go is required to build Kubernetes $KUBE_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  local modjson moddir staging_version
  modjson=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION")
  moddir=$(printf '%s' "$modjson" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  [[ -f $moddir/go.mod ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION"
  staging_version=v0.${KUBE_VERSION#v1.}
  {
    echo "module tenant-config-controller/testenv-k8s"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$moddir/go.mod")"
    echo
    echo "require ("
    echo "  k8s.io/kubernetes $KUBE_VERSION"
    echo "  go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/[a-z0-9-]*$#  \1 => \1 '"$staging_version"'#p' "$moddir/go.mod"
    echo ")"
  } >"$work/go.mod"
  (cd "$work" && GOWORK=off GOFLAGS=-mod=mod go get "k8s.io/kubernetes@$KUBE_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION") >&2
  touch "$work/.ready"
  printf '%s' "$work"
}

# Builds k8s.io/kubernetes/cmd/<name> for each name not built yet.
build_kubernetes_binaries() {
  local work name minor=${KUBE_VERSION#v1.} ldflags="-s -w" pkg
  minor=${minor%%.*}
  # Stamp the version as Kubernetes' own build does (hack/lib/version.sh);
  # without it the binaries report v0.0.0-master and version checks fail.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$K8S_BIN"
  for name in "$@"; do
    [[ -f $K8S_BIN/.built-$name ]] && continue
    work=$(k8s_wrapper_module)
    log "building $name $KUBE_VERSION (cold: minutes)"
    (cd "$work" && GOWORK=off GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN/$name" "k8s.io/kubernetes/cmd/$name")
    touch "$K8S_BIN/.built-$name"
  done
}

build_kubernetes() {
  if [[ -f $K8S_BIN/.complete ]]; then return; fi
  log "building kube-apiserver, kubectl $KUBE_VERSION and etcd $ETCD_VERSION (cold: several minutes)"
  build_kubernetes_binaries kube-apiserver kubectl
  local work
  work=$(k8s_wrapper_module)
  (cd "$work" && GOWORK=off GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$K8S_BIN/etcd" go.etcd.io/etcd/server/v3)
  touch "$K8S_BIN/.complete"
  log "built into $K8S_BIN"
}

build_helm() {
  if [[ -f $HELM_BIN/.complete ]]; then return; fi
  log "building helm $HELM_VERSION"
  mkdir -p "$HELM_BIN"
  (cd "$CACHE_DIR" && GOWORK=off GOBIN=$HELM_BIN go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  touch "$HELM_BIN/.complete"
}

# kstatus-check (tests/gitops/kstatus): kstatus as Flux computes it, from
# sigs.k8s.io/cli-utils at the version its go.sum pins; rebuilt when that changes.
build_kstatus() {
  local dir
  dir=$CACHE_DIR/kstatus-$(cat "$ROOT/tests/gitops/kstatus/go.mod" "$ROOT/tests/gitops/kstatus/go.sum" "$ROOT/tests/gitops/kstatus/main.go" | sha256sum | cut -c1-16)
  KSTATUS_BIN=$dir/kstatus-check
  if [[ -f $dir/.complete ]]; then return; fi
  log "building kstatus-check (sigs.k8s.io/cli-utils)"
  mkdir -p "$dir"
  (cd "$ROOT/tests/gitops/kstatus" && GOWORK=off go build -trimpath -ldflags "-s -w" -o "$KSTATUS_BIN" .)
  touch "$dir/.complete"
}

# A Go tool, built once from the Go module proxy: its bin dir, module@version, what it is.
build_go_tool() {
  local bin=$1 module=$2 what=$3
  if [[ -f $bin/.complete ]]; then return; fi
  log "building $what"
  mkdir -p "$bin"
  (cd "$CACHE_DIR" && GOWORK=off GOBIN=$bin go install -trimpath -ldflags "-s -w" "$module")
  touch "$bin/.complete"
}

# promtool, to check the chart's alert rules and run their unit tests.
build_promtool() {
  build_go_tool "$PROMTOOL_BIN" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION" \
    "promtool (prometheus $PROMETHEUS_VERSION)"
}

# grpcurl, a real third-party gRPC client for the config service's tests
# (through server reflection, without the proto file).
build_grpcurl() {
  build_go_tool "$GRPCURL_BIN" "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION" "grpcurl $GRPCURL_VERSION"
}

# A pinned Python tool in its own venv: venv dir, pip requirement.
build_venv() {
  local venv=$1 requirement=$2
  if [[ -f $venv/.complete ]]; then return; fi
  log "installing $requirement into a venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$requirement"
  touch "$venv/.complete"
}

# Interpreters the tests run real configuration with: Argo CD's health checks
# are Lua (5.4 here; Argo CD embeds gopher-lua, a 5.1 dialect the scripts keep to).
TOOL_DEBIAN_PACKAGES=(lua5.4 lua-dkjson)

# Installs the Debian packages among "$@" that are missing.
install_debian_packages() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return
  log "installing Debian packages: ${missing[*]}"
  command -v apt-get >/dev/null || die "apt-get is needed to install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_all() {
  mkdir -p "$CACHE_DIR"
  install_debian_packages "${TOOL_DEBIAN_PACKAGES[@]}"
  build_venv "$MOTO_VENV" "moto[server]==$MOTO_VERSION"
  build_venv "$CFN_LINT_VENV" "cfn-lint==$CFN_LINT_VERSION"
  build_kubernetes
  build_helm
  build_kstatus
  build_promtool
  build_grpcurl
}


# ---------------------------------------------------------------- run --------

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A PID is ours only if it still runs the binary we started (PIDs get reused).
pid_alive() {
  local name=$1 pid
  [[ -f $STATE_DIR/$name.pid ]] || return 1
  pid=$(<"$STATE_DIR/$name.pid")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$(<"$STATE_DIR/$name.cmd")"
}

start_bg() { # name, marker (a string of its command line), command...
  local name=$1 marker=$2; shift 2
  printf '%s' "$marker" >"$STATE_DIR/$name.cmd"
  printf '%s\0' "$@" >"$STATE_DIR/$name.argv" # for restart-kube
  setsid "$@" >>"$STATE_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/$name.pid"
}

stop_pid() { # name
  local name=$1 pid i
  pid_alive "$name" || { rm -f "$STATE_DIR/$name.pid"; return 0; }
  pid=$(<"$STATE_DIR/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do pid_alive "$name" || break; sleep 0.1; done
  if pid_alive "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$STATE_DIR/$name.pid"
}

wait_for() { # description, seconds, command...
  local what=$1 secs=$2 i; shift 2
  for i in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up within ${secs}s (logs in $STATE_DIR)"
}

make_certs() {
  local d=$STATE_DIR/pki
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=tcc-testenv-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  # The node's pods reach the API server at the bridge gateway (testenv-node.sh).
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost,DNS:kubernetes.default.svc\n' "$NODE_GATEWAY" >"$d/san.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
    -extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

up() {
  local with_node=false
  [[ ${1:-} != --node ]] || with_node=true
  if [[ -f $ENV_FILE ]] && pid_alive etcd && pid_alive kube-apiserver && pid_alive moto \
    && { ! $with_node || grep -q '^export TCC_NODE=1' "$ENV_FILE"; }; then
    log "already up; env file: $ENV_FILE"; return 0
  fi
  [[ ! -d $STATE_DIR ]] || down
  build_all
  if $with_node; then build_node; fi
  command -v openssl >/dev/null || die "openssl is required (Debian package openssl)"
  mkdir -p "$STATE_DIR"
  trap 'log "up failed; stopping what it started"; down' EXIT # cleared on success
  local started=$SECONDS etcd_port peer_port api_port moto_port token
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port); moto_port=$(free_port)
  token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  make_certs
  printf '%s,admin,admin-uid,"system:masters"\n' "$token" >"$STATE_DIR/pki/tokens.csv"

  start_bg etcd "$K8S_BIN/etcd" "$K8S_BIN/etcd" --name testenv --data-dir "$STATE_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "testenv=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level warn
  # moto plus the event delivery AWS does and moto does not (Pipes, SSM change events).
  start_bg moto "$ROOT/scripts/aws_emulator.py" "$MOTO_VENV/bin/python" "$ROOT/scripts/aws_emulator.py" -H 127.0.0.1 -p "$moto_port"
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

  start_bg kube-apiserver "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --endpoint-reconciler-type none \
    --tls-cert-file "$STATE_DIR/pki/apiserver.crt" --tls-private-key-file "$STATE_DIR/pki/apiserver.key" \
    --client-ca-file "$STATE_DIR/pki/ca.crt" \
    --token-auth-file "$STATE_DIR/pki/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$STATE_DIR/pki/sa.pub" \
    --service-account-signing-key-file "$STATE_DIR/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/24 \
    --cert-dir "$STATE_DIR/pki/generated" \
    --profiling=false
  wait_for moto 30 curl -sf "http://127.0.0.1:$moto_port/moto-api/"
  wait_for kube-apiserver 120 curl -sf --cacert "$STATE_DIR/pki/ca.crt" -H "Authorization: Bearer $token" \
    "https://127.0.0.1:$api_port/readyz"

  cat >"$STATE_DIR/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 "$STATE_DIR/pki/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: testenv
  context: { cluster: testenv, user: admin, namespace: default }
current-context: testenv
KUBECONFIG
  chmod 600 "$STATE_DIR/kubeconfig"

  cat >"$ENV_FILE" <<ENV
# Written by scripts/testenv.sh up; source it to talk to the local stack.
export TCC_TESTENV=$STATE_DIR
export KUBECONFIG=$STATE_DIR/kubeconfig
export KUBECTL=$K8S_BIN/kubectl
export HELM=$HELM_BIN/helm
export TCC_PYTHON=$MOTO_VENV/bin/python   # has boto3, for scripts that act as an operator would
export CFN_LINT=$CFN_LINT_VENV/bin/cfn-lint
export TCC_LUA=$(command -v lua5.4)
export TCC_KSTATUS=$KSTATUS_BIN
export TCC_PROMTOOL=$PROMTOOL_BIN/promtool
export TCC_GRPCURL=$GRPCURL_BIN/grpcurl
export TCC_ADMIN_TOKEN=$token
export TCC_SA_SIGNING_KEY=$STATE_DIR/pki/sa.key
export AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
ENV
  if $with_node; then node_up "$api_port" "$moto_port"; fi
  trap - EXIT
  log "up in $((SECONDS - started))s: kube-apiserver https://127.0.0.1:$api_port, moto http://127.0.0.1:$moto_port"
  log "env file: $ENV_FILE"
}

restart_kube() {
  [[ -f $ENV_FILE ]] || die "not up"
  # shellcheck source=/dev/null
  source "$ENV_FILE"
  local name argv etcd_url api_url
  for name in kube-apiserver etcd; do stop_pid "$name"; done
  for name in etcd kube-apiserver; do
    mapfile -d '' argv <"$STATE_DIR/$name.argv"
    start_bg "$name" "$(<"$STATE_DIR/$name.cmd")" "${argv[@]}"
    if [[ $name == etcd ]]; then
      etcd_url=$(tr '\0' '\n' <"$STATE_DIR/etcd.argv" | sed -n '/^--listen-client-urls$/{n;p}')
      wait_for etcd 30 curl -sf "$etcd_url/health"
    fi
  done
  api_url=$(sed -n 's/^ *server: //p' "$KUBECONFIG")
  wait_for kube-apiserver 120 curl -sf --cacert "$STATE_DIR/pki/ca.crt" -H "Authorization: Bearer $TCC_ADMIN_TOKEN" "$api_url/readyz"
  log "kube-apiserver and etcd restarted"
}

down() {
  local name rc=0
  node_down || rc=1
  for name in kube-apiserver etcd moto; do stop_pid "$name"; done
  if [[ $rc -ne 0 ]]; then
    log "error: the node left host changes behind (listed above); state kept in $STATE_DIR"
    return 1
  fi
  rm -rf "$STATE_DIR"
  log "down"
}

status() {
  local name rc=0
  for name in etcd kube-apiserver moto containerd kubelet kube-controller-manager kube-scheduler; do
    [[ -f $STATE_DIR/$name.cmd ]] || [[ $name == etcd || $name == kube-apiserver || $name == moto ]] || continue
    if pid_alive "$name"; then echo "$name: running (pid $(<"$STATE_DIR/$name.pid"))"; else echo "$name: stopped"; rc=1; fi
  done
  [[ ! -f $ENV_FILE ]] || echo "env file: $ENV_FILE"
  return $rc
}

case "${1:-}" in
  build) build_all; [[ ${2:-} != --node ]] || build_node ;;
  up) up "${2:-}" ;;
  down) down ;;
  status) status ;;
  restart-kube) restart_kube ;;
  env) echo "$ENV_FILE" ;;
  *) echo "usage: $0 build [--node]|up [--node]|down|status|env|restart-kube" >&2; exit 2 ;;
esac
