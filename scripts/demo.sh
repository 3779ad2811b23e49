#!/usr/bin/env bash
# One-command demo on the local stack (real kube-apiserver + moto).
#
#   ./scripts/demo.sh          run, then keep the stack up until Ctrl-C
#   ./scripts/demo.sh --once   run and tear down (for scripts and CI)
#
# It installs the API (CRDs), creates the AWS side on moto, applies the example
# stores, tenant namespaces and TenantConfigs, runs the controller, and shows
# what it produced: status, the DynamoDB item, the SSM parameters, the ConfigMap.
# Then it changes values out of band, as an operator would, and shows each change
# reach the ConfigMaps through the event path (DynamoDB stream → EventBridge
# Pipe → bus → rule → SQS; SSM → EventBridge → rule → SQS), with the delay.
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
controller_pid=
stop_all() {
  if [[ -n $controller_pid ]] && kill -0 "$controller_pid" 2>/dev/null; then
    kill -TERM "$controller_pid"; wait "$controller_pid" 2>/dev/null || true
  fi
  scripts/testenv.sh down
}
trap stop_all EXIT
say "Building the controller"
cargo build --quiet --locked --bin tenant-config-controller
CONTROLLER=${CARGO_TARGET_DIR:-$ROOT/target}/debug/tenant-config-controller
say "Starting the local stack: kube-apiserver + etcd (built from source), moto for AWS"
scripts/testenv.sh up
# shellcheck source=/dev/null
source "$(scripts/testenv.sh env)"
k() { "$KUBECTL" "$@"; }

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

say "Running the controller: events from the queue, full resync every 10 minutes"
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Started directly (not through `run`, which would fork a subshell) so that
# $! is the controller itself and the SIGTERM at exit reaches it.
printf '$ tenant-config-controller run --event-queue-url %s --secure-projection --http-addr 127.0.0.1:%s\n' "$queue_url" "$http_port"
"$CONTROLLER" run --event-queue-url "$queue_url" --secure-projection --http-addr "127.0.0.1:$http_port" \
  --log-level warn >"$TCC_STATE_DIR/controller.log" 2>&1 &
controller_pid=$!
echo "controller pid $controller_pid, log $TCC_STATE_DIR/controller.log"

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

say "An operator changes a value out of band in DynamoDB"
aws <<'PY'
import boto3, time
boto3.client("dynamodb").update_item(TableName="tenant-config",
    Key={"pk": {"S": "TENANT#acme"}, "sk": {"S": "CONFIG#payments#ENV#prod"}},
    UpdateExpression="SET #d.#k = :v", ExpressionAttributeNames={"#d": "data", "#k": "maintenance-mode"},
    ExpressionAttributeValues={":v": {"S": "on"}})
PY
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
curl -s "http://127.0.0.1:$http_port/metrics" | grep -E '^tenant_config_(leader|tenant_configs|event_messages_total|event_to_projection_seconds_count|shared_cache_lookups_total|store_calls_total\{backend="DynamoDB",operation="UpdateItem")' || true

say "A bad manifest is refused by the API server itself"
printf '$ kubectl apply (an entry with key "db/password")\n'
if printf 'apiVersion: tenantconfig.io/v1alpha1\nkind: TenantConfig\nmetadata: { name: bad, namespace: acme-prod }\nspec:\n  entries: [{ key: db/password, value: x }]\n' | k apply -f - ; then
  echo "unexpected: the invalid manifest was accepted" >&2; exit 1
fi

if $once; then
  say "Done (--once): stopping the stack"
else
  say "The stack stays up. KUBECONFIG=$KUBECONFIG AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL. Ctrl-C stops everything."
  while sleep 3600; do :; done
fi
