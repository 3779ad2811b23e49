#!/usr/bin/env bash
# One-command demo on the local stack (real kube-apiserver + moto).
#
#   ./scripts/demo.sh          run, then keep the stack up until Ctrl-C
#   ./scripts/demo.sh --once   run and tear down (for scripts and CI)
#
# Today it installs the API (CRDs), the example stores, tenant namespaces and
# TenantConfigs, and shows them as a user sees them. The controller that fills
# in their status, the stores and the ConfigMaps is being built (README roadmap).
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
trap 'scripts/testenv.sh down' EXIT
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

say "Tenant teams apply TenantConfigs"
run k apply --server-side -f examples/tenant-configs.yaml
run k get tcfg -A

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
