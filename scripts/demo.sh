#!/usr/bin/env bash
# One-command demo on the local stack (real kube-apiserver + moto).
#
#   ./scripts/demo.sh          run, then keep the stack up until Ctrl-C
#   ./scripts/demo.sh --once   run and tear down (for scripts and CI)
#
# It starts the stack with a real node (kubelet, containerd), installs the API
# (CRDs), creates the AWS side on moto, installs the controller with Helm (the
# locally built image, two replicas), applies the example stores, tenant
# namespaces and TenantConfigs, and shows what it produced: status, the
# DynamoDB item, the SSM parameters, the ConfigMap. Then it changes values out
# of band, as an operator would, and shows each change reach the ConfigMaps
# through the event path (DynamoDB stream → EventBridge Pipe → bus → rule →
# SQS; SSM → EventBridge → rule → SQS), with the delay. It ends with a tenant
# pod printing its mounted config file, and a store change reaching that file
# at once (the pod opts in to refresh); and a tenant pod watching its
# configuration through the config service (gRPC, its own ServiceAccount token),
# a store change arriving in its watch.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
once=false
case "${1:-}" in
  --once) once=true ;;
  "") ;;
  *) echo "usage: $0 [--once]" >&2; exit 2 ;;
esac

say() { printf '\n\033[1m## %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

export TCC_STATE_DIR=${TCC_STATE_DIR:-$ROOT/.testenv/demo}
stop_all() { scripts/testenv.sh down; }
trap stop_all EXIT
say "Building the controller"
cargo build --quiet --locked --bin tenant-config-controller
CONTROLLER=${CARGO_TARGET_DIR:-$ROOT/target}/debug/tenant-config-controller
say "Starting the local stack: kube-apiserver + etcd, a node (kubelet, containerd), moto for AWS"
scripts/testenv.sh up --node
# shellcheck source=/dev/null
source "$(scripts/testenv.sh env)"
k() { "$KUBECTL" "$@"; }
run k get nodes

say "Installing the CRDs (ConfigStore, TenantConfig)"
run k apply --server-side -f crds/
run k wait --for condition=Established --timeout 60s -f crds/ >/dev/null

say "The platform team defines stores: tags route entries to DynamoDB or Parameter Store"
run k apply --server-side -f examples/config-stores.yaml
run k get configstores

say "Tenant namespaces carry the tenant label (set by the platform, never by tenants)"
run k apply --server-side -f examples/namespaces.yaml
run k get namespaces -l tenantconfig.io/tenant -L tenantconfig.io/tenant,tenantconfig.io/environment

say "The AWS side (on moto), from examples/aws/tenant-config.yaml: table with stream, queue + DLQ, Pipe, rules"
aws() { "$TCC_PYTHON" - "$@"; }
echo "The template's rules use the controller's own event patterns (a test checks they match):"
run "$CONTROLLER" event-patterns --parameter-prefix /tenant-config --parameter-prefix /tenant-config-shared
printf '$ scripts/local_aws.py --template examples/aws/tenant-config.yaml\n'
created=$("$TCC_PYTHON" scripts/local_aws.py --template examples/aws/tenant-config.yaml)
echo "$created"
queue_url=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["queueUrl"])' "$created")
aws <<'PY'
import boto3
boto3.client("ssm").put_parameter(Name="/tenant-config-shared/prod/payments/region", Value="eu-west-1", Type="String")
print("the platform publishes /tenant-config-shared/prod/payments/region = eu-west-1")
PY

say "Installing the controller with Helm: the local image, two replicas, leader election"
# Test-time values only: the local image, and the way pods on this node reach the
# loopback-only API server and moto (the node's bridge gateway). On EKS none of this is set.
pod_queue_url=${queue_url/$AWS_ENDPOINT_URL/$TCC_POD_AWS_ENDPOINT_URL}
cat >"$TCC_STATE_DIR/demo-values.yaml" <<VALUES
image: { repository: ${TCC_CONTROLLER_IMAGE%:*}, tag: "${TCC_CONTROLLER_IMAGE##*:}", pullPolicy: Never }
events: { queueUrl: "$pod_queue_url" }
aws: { region: us-east-1, rateLimits: { ssmWritesPerSecond: 0 } }
secureProjection: { enabled: true }
refresh: { enabled: true }
configApi: { enabled: true, tls: { secretName: tcc-config-api-tls } }
extraEnv:
  - { name: KUBERNETES_SERVICE_HOST, value: "$TCC_POD_KUBERNETES_SERVICE_HOST" }
  - { name: KUBERNETES_SERVICE_PORT, value: "$TCC_POD_KUBERNETES_SERVICE_PORT" }
  - { name: AWS_ENDPOINT_URL, value: "$TCC_POD_AWS_ENDPOINT_URL" }
  - { name: AWS_ACCESS_KEY_ID, value: testing }
  - { name: AWS_SECRET_ACCESS_KEY, value: testing }
  - { name: AWS_EC2_METADATA_DISABLED, value: "true" }
VALUES
k create namespace tcc-system --dry-run=client -o yaml | k apply -f - >/dev/null
# The config service serves TLS only: a demo CA and a certificate for its
# Service name (on EKS, cert-manager would issue it).
config_api_name=tcc-tenant-config-controller-config-api.tcc-system.svc
tls_dir=$TCC_STATE_DIR/config-api-tls
mkdir -p "$tls_dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=tcc-demo-ca \
  -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$config_api_name" \
  -keyout "$tls_dir/tls.key" -out "$tls_dir/tls.csr" 2>/dev/null
openssl x509 -req -in "$tls_dir/tls.csr" -CA "$tls_dir/ca.crt" -CAkey "$tls_dir/ca.key" -CAcreateserial -days 1 \
  -extfile <(printf 'subjectAltName=DNS:%s\n' "$config_api_name") -out "$tls_dir/tls.crt" 2>/dev/null
k create secret tls tcc-config-api-tls -n tcc-system --cert "$tls_dir/tls.crt" --key "$tls_dir/tls.key" \
  --dry-run=client -o yaml | k apply -f - >/dev/null
run k label namespace tcc-system pod-security.kubernetes.io/enforce=restricted --overwrite
run "$HELM" install tcc charts/tenant-config-controller -n tcc-system -f "$TCC_STATE_DIR/demo-values.yaml" --wait --timeout 180s
run k get pods -n tcc-system -o wide
leader=
for _ in $(seq 1 120); do
  leader=$(k get lease tcc-tenant-config-controller -n tcc-system -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [[ -n $leader ]] && break
  sleep 0.5
done
echo "leader (Lease holder): $leader"

say "Tenant teams apply TenantConfigs"
run k apply --server-side -f examples/tenant-configs.yaml
for _ in $(seq 1 120); do
  ready=$(k get tcfg -A -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  [[ $ready -ge 2 ]] && break
  sleep 0.5
done
run k get tcfg -A

say "What the controller wrote: the DynamoDB item for acme/payments"
aws <<'PY'
import boto3, json
item = boto3.client("dynamodb").get_item(TableName="tenant-config", ConsistentRead=True,
    Key={"pk": {"S": "TENANT#acme"}, "sk": {"S": "CONFIG#payments#ENV#prod"}})["Item"]
print(json.dumps({k: item[k] for k in ("pk", "sk", "data", "managedKeys", "managedBy", "version")}, indent=1))
PY

say "... and the Parameter Store parameters (the secure one is a SecureString)"
aws <<'PY'
import boto3
ps = boto3.client("ssm").get_parameters_by_path(Path="/tenant-config", Recursive=True)["Parameters"]
for p in ps: print(f'{p["Name"]:55} {p["Type"]:13} {p["Value"] if p["Type"] != "SecureString" else "(encrypted)"}')
PY

say "The projected ConfigMap in acme-prod: shared include < SSM < DynamoDB; no secret in it"
run k get configmap payments-config -n acme-prod -o jsonpath='{.data}'; echo
run k get secret payments-secrets -n acme-prod -o jsonpath='{.data}'; echo

# An operator sets KEY=VALUE in acme's DynamoDB item, out of band.
set_in_acme_item() {
  "$TCC_PYTHON" - "$1" "$2" <<'PY'
import boto3, sys
boto3.client("dynamodb").update_item(TableName="tenant-config",
    Key={"pk": {"S": "TENANT#acme"}, "sk": {"S": "CONFIG#payments#ENV#prod"}},
    UpdateExpression="SET #d.#k = :v", ExpressionAttributeNames={"#d": "data", "#k": sys.argv[1]},
    ExpressionAttributeValues={":v": {"S": sys.argv[2]}})
print(f"an operator sets {sys.argv[1]}={sys.argv[2]} in acme's DynamoDB item")
PY
}

say "An operator changes a value out of band in DynamoDB"
set_in_acme_item maintenance-mode on
# Waits until a ConfigMap key has a value; prints the delay since $1 (epoch seconds).
wait_key() { # since namespace configmap key value
  local since=$1 ns=$2 cm=$3 key=$4 want=$5 got=
  for _ in $(seq 1 300); do
    got=$(k get configmap "$cm" -n "$ns" -o jsonpath="{.data.$key}")
    [[ $got == "$want" ]] && break
    sleep 0.05
  done
  printf '%s/%s: %s=%s reached the ConfigMap after %.2fs\n' "$ns" "$cm" "$key" "$got" \
    "$(python3 -c "import time; print(time.time() - $since)")"
}
changed_at=$(date +%s.%N)
wait_key "$changed_at" acme-prod payments-config maintenance-mode on

say "The platform changes the shared parameter both tenants include"
aws <<'PY'
import boto3
boto3.client("ssm").put_parameter(Name="/tenant-config-shared/prod/payments/region", Value="eu-central-1",
    Type="String", Overwrite=True)
PY
changed_at=$(date +%s.%N)
wait_key "$changed_at" acme-prod payments-config region eu-central-1
wait_key "$changed_at" globex-prod checkout region eu-central-1

say "Isolation: a TenantConfig that includes another tenant's path is refused"
printf 'apiVersion: tenantconfig.io/v1alpha1\nkind: TenantConfig\nmetadata: { name: snoop, namespace: acme-prod }\nspec:\n  defaultTags: [tenant]\n  entries: [{ key: a, value: b }]\n  include: [{ parameterPath: /tenant-config/globex/prod/checkout }]\n' | k apply -f - >/dev/null
for _ in $(seq 1 60); do
  reason=$(k get tcfg snoop -n acme-prod -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')
  [[ -n $reason ]] && break
  sleep 0.5
done
run k get tcfg snoop -n acme-prod -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}: {.status.conditions[?(@.type=="Ready")].message}'; echo

say "What the controller reports on /metrics (a few lines)"
k get --raw "/api/v1/namespaces/tcc-system/pods/$leader:8080/proxy/metrics" | grep -E '^tenant_config_(leader|tenant_configs|event_messages_total|event_to_projection_seconds_count|shared_cache_lookups_total|store_calls_total\{backend="DynamoDB",operation="UpdateItem")' || true

say "A bad manifest is refused by the API server itself"
printf '$ kubectl apply (an entry with key "db/password")\n'
if printf 'apiVersion: tenantconfig.io/v1alpha1\nkind: TenantConfig\nmetadata: { name: bad, namespace: acme-prod }\nspec:\n  entries: [{ key: db/password, value: x }]\n' | k apply -f - ; then
  echo "unexpected: the invalid manifest was accepted" >&2; exit 1
fi

say "A tenant pod mounts the ConfigMap and prints its file (labelled tenantconfig.io/refresh: \"true\")"
k label namespace acme-prod pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
cat <<POD | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: { name: payments-app, namespace: acme-prod, labels: { tenantconfig.io/refresh: "true" } }
spec:
  securityContext: { runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534, seccompProfile: { type: RuntimeDefault } }
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: $TCC_BUSYBOX_IMAGE
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", "while true; do echo \"provider=\$(cat /config/provider) checkout-flow=\$(cat /config/checkout-flow 2>/dev/null)\"; sleep 0.2; done"]
      volumeMounts: [{ name: config, mountPath: /config }]
      securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } }
  volumes: [{ name: config, configMap: { name: payments-config } }]
POD
run k wait --for condition=Ready pod/payments-app -n acme-prod --timeout 60s
sleep 2
run k logs payments-app -n acme-prod --tail 1

say "A store change reaches the file inside the pod at once: the controller refreshes the labelled pod (the kubelet alone would take up to about a minute)"
set_in_acme_item checkout-flow v2
changed_at=$(date +%s.%N)
since() { python3 -c "import time; print(f'{time.time() - $changed_at:.1f}')"; }
wait_key "$changed_at" acme-prod payments-config checkout-flow v2
line=
for _ in $(seq 1 1500); do
  line=$(k logs payments-app -n acme-prod --tail 1 2>/dev/null || true)
  [[ $line == *"checkout-flow=v2"* ]] && break
  sleep 0.1
done
echo "pod prints: $line"
[[ $line == *"checkout-flow=v2"* ]] || { echo "the change did not reach the pod's file" >&2; exit 1; }
echo "the change reached the file inside the pod after $(since)s"

say "A tenant application watches its configuration over gRPC (the config service), as its own ServiceAccount"
echo "No namespace or tenant in the request: the service takes them from the pod's projected token (TokenReview)."
k create serviceaccount payments-reader -n acme-prod --dry-run=client -o yaml | k apply -f - >/dev/null
k create configmap tenant-config-ca -n acme-prod --from-file=ca.crt="$tls_dir/ca.crt" \
  --dry-run=client -o yaml | k apply -f - >/dev/null
# This node has no cluster DNS: the pod calls a replica by its IP and checks the
# certificate against the Service name (on EKS: the Service's DNS name as --url).
replica_ip=$(k get pod "$leader" -n tcc-system -o jsonpath='{.status.podIP}')
cat <<POD | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: { name: payments-watcher, namespace: acme-prod }
spec:
  serviceAccountName: payments-reader
  automountServiceAccountToken: false
  securityContext: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: { type: RuntimeDefault } }
  terminationGracePeriodSeconds: 1
  containers:
    - name: watch
      image: $TCC_CONTROLLER_IMAGE
      imagePullPolicy: Never
      args: [config, watch, payments, --url, "https://$replica_ip:8443", --server-name, "$config_api_name",
             --ca-file, /etc/tenant-config-ca/ca.crt]
      volumeMounts:
        - { name: tenantconfig-token, mountPath: /var/run/secrets/tenantconfig.io, readOnly: true }
        - { name: config-api-ca, mountPath: /etc/tenant-config-ca, readOnly: true }
      securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } }
  volumes:
    - name: tenantconfig-token
      projected:
        sources: [{ serviceAccountToken: { audience: tenantconfig.io, expirationSeconds: 3600, path: token } }]
    - name: config-api-ca
      configMap: { name: tenant-config-ca }
POD
run k wait --for condition=Ready pod/payments-watcher -n acme-prod --timeout 60s
first=
for _ in $(seq 1 200); do
  first=$(k logs payments-watcher -n acme-prod 2>/dev/null | grep -m1 '"tenant":"acme"' || true)
  [[ -n $first ]] && break
  sleep 0.1
done
[[ -n $first ]] || { k logs payments-watcher -n acme-prod >&2 || true; echo "the pod's watch got nothing" >&2; exit 1; }
echo "the pod's watch starts with: $first"
set_in_acme_item rollout-wave 3
changed_at=$(date +%s.%N)
line=
for _ in $(seq 1 1500); do
  line=$(k logs payments-watcher -n acme-prod 2>/dev/null | grep '"rollout-wave":"3"' | head -1 || true)
  [[ -n $line ]] && break
  sleep 0.05
done
[[ -n $line ]] || { k logs payments-watcher -n acme-prod >&2 || true; echo "the change did not reach the pod's watch" >&2; exit 1; }
echo "the pod's watch prints: $line"
echo "the change reached the pod's watch after $(since)s"

if $once; then
  say "Done (--once): stopping the stack"
else
  say "The stack stays up. KUBECONFIG=$KUBECONFIG AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL. Ctrl-C stops everything."
  while sleep 3600; do :; done
fi
