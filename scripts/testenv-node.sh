# shellcheck shell=bash
# The node part of the local test stack (DESIGN.md §9): containerd + runc + CNI
# plugins, kubelet, kube-controller-manager and kube-scheduler, and locally
# built images (pause, busybox, the controller) imported into containerd.
# Sourced by scripts/testenv.sh, which defines log/die/start_bg/stop_pid/
# pid_alive/wait_for and the CACHE_DIR/STATE_DIR/K8S_BIN variables.
#
# A node changes the host. `node_down` undoes each change, in this order, and
# `node_check_clean` fails if anything is left:
#   workloads → kube-scheduler, kube-controller-manager, kubelet (by PID) →
#   pods and their shims (crictl rmp -fa; also tears down CNI netns and shm
#   mounts) → containerd → mounts under kubelet's and containerd's dirs →
#   the CNI bridge → iptables chains kubelet adds → sysctls → kubepods cgroups.
# Fixed ports, names and cgroup paths: one node per machine at a time.

CONTAINERD_VERSION=v2.4.2
CRICTL_VERSION=v1.37.0
NODE_DIR=$STATE_DIR/node
NODE_BIN=$CACHE_DIR/node-containerd-$CONTAINERD_VERSION-crictl-$CRICTL_VERSION/bin
NODE_DEBIAN_PACKAGES=(runc containernetworking-plugins iptables iproute2 busybox-static)
CNI_BIN_DIR=/usr/lib/cni
# Where a node of this machine lives while it runs; fixed, so that a second one
# (another checkout, another state dir) finds it and refuses to start.
NODE_LOCK=/run/tenant-config-controller-node
NODE_GATEWAY=10.244.0.1
NODE_BRIDGE=tcc0
NODE_POD_CIDR=10.244.0.0/24
NODE_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward)
NODE_IPTABLES_CHAINS=(KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT)
NODE_CGROUP_CONTROLLERS=(cpu cpuacct cpuset memory pids blkio devices freezer hugetlb net_cls net_prio perf_event rdma misc systemd)

# ---------------------------------------------------------------- build ------

install_node_packages() {
  install_debian_packages "${NODE_DEBIAN_PACKAGES[@]}"
}

# containerd (CGO off, without the snapshotters this host cannot use) and
# crictl, from the Go module proxy.
build_node_runtime() {
  if [[ -f $NODE_BIN/.complete ]]; then return; fi
  log "building containerd $CONTAINERD_VERSION and crictl $CRICTL_VERSION"
  mkdir -p "$NODE_BIN"
  (
    cd "$CACHE_DIR"
    export GOWORK=off CGO_ENABLED=0 GOBIN=$NODE_BIN
    go install -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "-s -w" \
      "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
    go install -trimpath -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  )
  touch "$NODE_BIN/.complete"
}

build_node() {
  install_node_packages
  build_kubernetes_binaries kubelet kube-controller-manager kube-scheduler
  build_node_runtime
}

# ---------------------------------------------------------------- images -----

PAUSE_IMAGE=docker.io/library/tcc-pause:local
BUSYBOX_IMAGE=docker.io/library/tcc-busybox:local

# pause (our own, scripts/pause), busybox (Debian's busybox-static) and the
# controller (scripts/image.sh, the dev binary the suite built), imported into
# the node's containerd. Prints the controller's image reference.
node_images() {
  local dir=$NODE_DIR/images ctr=("$NODE_BIN/ctr" --address "$NODE_DIR/containerd/containerd.sock" -n k8s.io)
  mkdir -p "$dir"
  (cd "$ROOT/scripts/pause" && GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/pause" .)
  python3 "$ROOT/scripts/oci_image.py" --name "$PAUSE_IMAGE" --out "$dir/pause.tar" \
    --file "$dir/pause:/pause" --entrypoint /pause --user 65535:65535 >/dev/null
  local applets=(sh cat ls sleep nc echo env date stat test grep wc head tail true false)
  local links=() applet
  for applet in "${applets[@]}"; do links+=(--symlink "/bin/$applet:busybox"); done
  python3 "$ROOT/scripts/oci_image.py" --name "$BUSYBOX_IMAGE" --out "$dir/busybox.tar" \
    --file /bin/busybox:/bin/busybox "${links[@]}" --dir /tmp:1777 \
    --env PATH=/bin --entrypoint /bin/sh >/dev/null
  local controller
  controller=$("$ROOT/scripts/image.sh" --profile "${TCC_IMAGE_PROFILE:-dev}" --out "$dir/controller.tar" | tail -1)
  for archive in pause busybox controller; do
    "${ctr[@]}" images import --local "$dir/$archive.tar" >/dev/null || die "importing the $archive image"
  done
  python3 -c 'import json,sys; print(json.loads(sys.argv[1])["name"])' "$controller"
}

# ---------------------------------------------------------------- up ---------

node_lock_holder() { [[ -f $NODE_LOCK ]] && cat "$NODE_LOCK"; }

sysctl_value() { sysctl -n "$1" 2>/dev/null; }

node_up() { # api_port moto_port
  local api_port=$1 moto_port=$2 holder
  if holder=$(node_lock_holder); then
    die "a node already runs on this machine (state dir $holder): one node per machine (fixed ports, names, cgroups); stop it first with TCC_STATE_DIR=$holder scripts/testenv.sh down"
  fi
  [[ $(id -u) == 0 ]] || die "the node needs root (mounts, a bridge, iptables, cgroups)"
  [[ -d /sys/fs/cgroup/memory ]] || die "the node expects cgroup v1 controllers under /sys/fs/cgroup (kubelet failCgroupV1: false)"
  build_node
  mkdir -p "$NODE_DIR"/{containerd,cni/net.d,cni/ipam,kubelet,kubelet-pki,opt}
  printf '%s\n' "$STATE_DIR" >"$NODE_LOCK"
  # Host state to restore, taken before anything changes it.
  local s
  for s in "${NODE_SYSCTLS[@]}"; do printf '%s=%s\n' "$s" "$(sysctl_value "$s")"; done >"$NODE_DIR/sysctls.orig"

  # The bridge, made here (not by the CNI plugin) so that its gateway address
  # exists before any pod: pods reach the loopback-only API server and moto
  # through a DNAT on it (route_localnet on this bridge only), and nothing
  # from it is forwarded anywhere.
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "${NODE_GATEWAY}/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  sysctl -qw "net.ipv4.conf.$NODE_BRIDGE.route_localnet=1"
  iptables -t nat -N TCC-NODE
  iptables -t nat -A PREROUTING -i "$NODE_BRIDGE" -j TCC-NODE
  local port
  for port in "$api_port" "$moto_port"; do
    iptables -t nat -A TCC-NODE -d "$NODE_GATEWAY" -p tcp --dport "$port" -j DNAT --to-destination "127.0.0.1:$port"
  done
  iptables -N TCC-NODE-FORWARD
  iptables -I FORWARD 1 -j TCC-NODE-FORWARD
  iptables -A TCC-NODE-FORWARD -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
  iptables -A TCC-NODE-FORWARD -o "$NODE_BRIDGE" ! -i "$NODE_BRIDGE" -j DROP

  cat >"$NODE_DIR/cni/net.d/10-tcc.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "tcc",
  "plugins": [{
    "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
    "ipam": { "type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
              "ranges": [[{ "subnet": "$NODE_POD_CIDR", "rangeStart": "10.244.0.10", "gateway": "$NODE_GATEWAY" }]] }
  }]
}
CNI
  cat >"$NODE_DIR/containerd/config.toml" <<TOML
version = 3
root = '$NODE_DIR/containerd/root'
state = '$NODE_DIR/containerd/state'
imports = []
[grpc]
  address = '$NODE_DIR/containerd/containerd.sock'
[plugins.'io.containerd.internal.v1.opt']
  path = '$NODE_DIR/opt'
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = '$PAUSE_IMAGE'
[plugins.'io.containerd.cri.v1.runtime']
  # The machine's capability set lacks CAP_SYS_RESOURCE: without this every
  # sandbox fails ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ['$CNI_BIN_DIR']
  conf_dir = '$NODE_DIR/cni/net.d'
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
TOML
  # The shim must be first on PATH (containerd starts it by name).
  start_bg containerd "$NODE_BIN/containerd" env "PATH=$NODE_BIN:$PATH" "$NODE_BIN/containerd" --config "$NODE_DIR/containerd/config.toml"
  wait_for containerd 30 "$NODE_BIN/ctr" --address "$NODE_DIR/containerd/containerd.sock" version
  local controller_image
  controller_image=$(node_images)

  start_bg kube-controller-manager "$K8S_BIN/kube-controller-manager" "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$STATE_DIR/kubeconfig" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --service-account-private-key-file "$STATE_DIR/pki/sa.key" --root-ca-file "$STATE_DIR/pki/ca.crt" \
    --use-service-account-credentials=false
  start_bg kube-scheduler "$K8S_BIN/kube-scheduler" "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$STATE_DIR/kubeconfig" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false

  # kubelet defaults where users see them (syncFrequency 1m, as on EKS); only
  # what this host needs differs: cgroup v1, swap, cgroupfs, no image GC of
  # the locally imported images (pullPolicy Never cannot get them back).
  cat >"$NODE_DIR/kubelet.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication: { anonymous: { enabled: true }, webhook: { enabled: false } }
authorization: { mode: AlwaysAllow }
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$NODE_DIR/containerd/containerd.sock
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: { memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1% }
serializeImagePulls: false
maxPods: 60
KUBELET
  start_bg kubelet "$K8S_BIN/kubelet" "$K8S_BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$STATE_DIR/kubeconfig" --hostname-override localhost \
    --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet-pki"
  wait_for "node localhost Ready" 120 node_ready

  cat >>"$ENV_FILE" <<ENV
export TCC_NODE=1
export TCC_CONTROLLER_IMAGE=$controller_image
export TCC_BUSYBOX_IMAGE=$BUSYBOX_IMAGE
# kubelet's root: pods/<uid>/volumes/ holds each mounted file as its container sees it.
export TCC_KUBELET_ROOT=$NODE_DIR/kubelet
# How pods on the node reach the loopback-only API server and moto.
export TCC_NODE_GATEWAY=$NODE_GATEWAY
export TCC_POD_KUBERNETES_SERVICE_HOST=$NODE_GATEWAY
export TCC_POD_KUBERNETES_SERVICE_PORT=$api_port
export TCC_POD_AWS_ENDPOINT_URL=http://$NODE_GATEWAY:$moto_port
ENV
}

node_ready() {
  "$K8S_BIN/kubectl" --kubeconfig "$STATE_DIR/kubeconfig" get node localhost \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

# ---------------------------------------------------------------- down -------

iptables_remove_chain() { # tool table chain
  local tool=$1 table=$2 chain=$3 rule
  "$tool" -t "$table" -S "$chain" >/dev/null 2>&1 || return 0
  while read -r rule; do
    # shellcheck disable=SC2086 # a rule is a list of arguments
    "$tool" -t "$table" ${rule/-A /-D } 2>/dev/null || true
  done < <("$tool" -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |$)" || true)
  "$tool" -t "$table" -F "$chain" 2>/dev/null || true
  "$tool" -t "$table" -X "$chain" 2>/dev/null || true
}

node_mounts() { awk -v d="$NODE_DIR" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r; }

node_cgroups() {
  local c
  for c in "${NODE_CGROUP_CONTROLLERS[@]}"; do
    [[ -d /sys/fs/cgroup/$c/kubepods ]] && find "/sys/fs/cgroup/$c/kubepods" -depth -type d
  done
  return 0
}

# Kills (SIGKILL, by PID) every process still in one of the node's pod cgroups
# and waits for the cgroups to empty (at most 10 s).
node_kill_pod_processes() {
  local name pid i busy
  for i in $(seq 1 50); do
    busy=0
    while read -r name; do
      [[ -f $name/tasks ]] || continue
      for pid in $(cat "$name/tasks" 2>/dev/null); do
        busy=1
        kill -KILL "$pid" 2>/dev/null || true
      done
    done < <(node_cgroups)
    [[ $busy == 0 ]] && return 0
    sleep 0.2
  done
  return 0
}

node_down() {
  [[ -d $NODE_DIR ]] || return 0
  local name i
  for name in kube-scheduler kube-controller-manager kubelet; do stop_pid "$name"; done
  # Pods outlive kubelet (their shims outlive containerd too): remove them
  # through the CRI, which also tears down their network namespaces and shm.
  if pid_alive containerd; then
    "$NODE_BIN/crictl" --runtime-endpoint "unix://$NODE_DIR/containerd/containerd.sock" rmp -fa >/dev/null 2>&1 || true
  fi
  stop_pid containerd
  # Shims that survived (containerd gone before they were told): by PID, ours only.
  for name in $(pgrep -f "containerd-shim-runc-v2 .*-address $NODE_DIR/" || true); do kill -KILL "$name" 2>/dev/null || true; done
  for i in 1 2 3; do
    while read -r name; do umount -l "$name" 2>/dev/null || true; done < <(node_mounts)
  done
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  local tool
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for chain in "${NODE_IPTABLES_CHAINS[@]}"; do
      for table in filter nat mangle; do iptables_remove_chain "$tool" "$table" "$chain"; done
    done
  done
  iptables_remove_chain iptables nat TCC-NODE
  iptables_remove_chain iptables filter TCC-NODE-FORWARD
  if [[ -f $NODE_DIR/sysctls.orig ]]; then
    while IFS== read -r key value; do [[ -z $value ]] || sysctl -qw "$key=$value"; done <"$NODE_DIR/sysctls.orig"
  fi
  # Pod processes whose shim went first (crictl rmp can time out with many
  # pods; pause outlives its shim): by PID, only those in the node's pod cgroups.
  node_kill_pod_processes
  while read -r name; do rmdir "$name" 2>/dev/null || true; done < <(node_cgroups)
  # Called as `node_down || rc=1`, where errexit is off: fail explicitly,
  # keeping the state for a look.
  node_check_clean || return 1
  rm -rf "$NODE_DIR"
  rm -f "$NODE_LOCK"
}

# Fails, naming each leftover, unless the host is as it was before the node.
node_check_clean() {
  local left=() name
  for name in containerd kubelet kube-controller-manager kube-scheduler; do
    pid_alive "$name" && left+=("process $name")
  done
  pgrep -f "containerd-shim-runc-v2 .*-address $NODE_DIR/" >/dev/null && left+=("containerd shims")
  while read -r name; do left+=("mount $name"); done < <(node_mounts)
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && left+=("bridge $NODE_BRIDGE")
  local tool table chain
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for chain in "${NODE_IPTABLES_CHAINS[@]}" TCC-NODE TCC-NODE-FORWARD; do
      for table in filter nat mangle; do
        "$tool" -t "$table" -S "$chain" >/dev/null 2>&1 && left+=("$tool chain $table/$chain")
      done
    done
  done
  if [[ -f $NODE_DIR/sysctls.orig ]]; then
    while IFS== read -r key value; do
      [[ -z $value || $(sysctl_value "$key") == "$value" ]] || left+=("sysctl $key=$(sysctl_value "$key") (was $value)")
    done <"$NODE_DIR/sysctls.orig"
  fi
  while read -r name; do left+=("cgroup $name"); done < <(node_cgroups)
  if [[ ${#left[@]} -gt 0 ]]; then
    printf '[testenv] left behind by the node: %s\n' "${left[@]}" >&2
    return 1
  fi
  log "node down: no process, mount, bridge, iptables chain, sysctl change or cgroup left"
}
