#!/usr/bin/env bash
# One-command demo on the local stack (real kube-apiserver + moto).
#
#   ./scripts/demo.sh          run, then keep the stack up until Ctrl-C
#   ./scripts/demo.sh --once   run and tear down (for scripts and CI)
#
# It installs the API (CRDs), creates the AWS side on moto, applies the example
# stores, tenant namespaces and TenantConfigs, runs the controller, and shows
# what it produced: status, the DynamoDB item, the SSM parameters, the ConfigMap.
# Store changes reach ConfigMaps at the next resync (5 s here) until the
# EventBridge/SQS path lands.
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

say "The AWS side (on moto): the DynamoDB table and a shared parameter the platform publishes"
aws() { "$TCC_PYTHON" - "$@"; }
aws <<'PY'
import boto3, os
ddb = boto3.client("dynamodb")
ddb.create_table(TableName="tenant-config", BillingMode="PAY_PER_REQUEST",
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}])
boto3.client("ssm").put_parameter(Name="/tenant-config-shared/prod/payments/region", Value="eu-west-1", Type="String")
print("created table tenant-config and /tenant-config-shared/prod/payments/region")
PY

say "Running the controller (resync every 5s)"
"$CONTROLLER" run --resync-interval 5s --secure-projection --log-level warn >"$TCC_STATE_DIR/controller.log" 2>&1 &
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
changed_at=$(date +%s.%N)
for _ in $(seq 1 200); do
  [[ $(k get configmap payments-config -n acme-prod -o jsonpath='{.data.maintenance-mode}') == on ]] && break
  sleep 0.1
done
printf 'maintenance-mode=%s reached the ConfigMap after %.1fs (resync; events will make this sub-second)\n' \
  "$(k get configmap payments-config -n acme-prod -o jsonpath='{.data.maintenance-mode}')" \
  "$(python3 -c "import time; print(time.time() - $changed_at)")"

say "Isolation: a TenantConfig that includes another tenant's path is refused"
printf 'apiVersion: tenantconfig.io/v1alpha1\nkind: TenantConfig\nmetadata: { name: snoop, namespace: acme-prod }\nspec:\n  defaultTags: [tenant]\n  entries: [{ key: a, value: b }]\n  include: [{ parameterPath: /tenant-config/globex/prod/checkout }]\n' | k apply -f - >/dev/null
for _ in $(seq 1 60); do
  reason=$(k get tcfg snoop -n acme-prod -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')
  [[ -n $reason ]] && break
  sleep 0.5
done
run k get tcfg snoop -n acme-prod -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}: {.status.conditions[?(@.type=="Ready")].message}'; echo

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
