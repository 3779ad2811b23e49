#!/usr/bin/env bash
# The whole test suite: style gates, CRD drift, unit tests, and integration tests
# against the local stack (real kube-apiserver + etcd, moto). Brings the stack up
# and always takes it down again.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "cargo fmt --check"
cargo fmt --all -- --check

step "build (one dev profile for everything)"
cargo build --all-targets --locked

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "CRD drift check"
cargo run --quiet --locked --bin crdgen -- --check

step "test environment up, with a node (kubelet, containerd, local images)"
trap 'scripts/testenv.sh down' EXIT
scripts/testenv.sh up --node
# shellcheck source=/dev/null
source "$(scripts/testenv.sh env)"

step "the controller image is reproducible"
scripts/image.sh --profile dev --out "$TCC_TESTENV/image-check.tar" --check-reproducible >/dev/null

step "cargo test"
cargo test --locked --no-fail-fast -- "$@"

step "test environment down: the node leaves nothing behind on the host"
trap - EXIT
scripts/testenv.sh down

step "demo (./scripts/demo.sh --once) on its own stack"
demo_log=$(mktemp)
trap 'TCC_STATE_DIR="$ROOT/.testenv/demo-test" scripts/testenv.sh down' EXIT
TCC_STATE_DIR="$ROOT/.testenv/demo-test" ./scripts/demo.sh --once >"$demo_log" 2>&1 || { cat "$demo_log"; echo "demo failed"; exit 1; }
demo_checks=(
  "acme-prod     payments   acme     True"
  "globex-prod   checkout   globex   True"
  '"managedBy"'
  "SecureString  (encrypted)"
  '"region":"eu-west-1"'
  "acme-prod/payments-config: maintenance-mode=on reached the ConfigMap"
  "acme-prod/payments-config: region=eu-central-1 reached the ConfigMap"
  "globex-prod/checkout: region=eu-central-1 reached the ConfigMap"
  "IncludeNotAllowed: include"
  "tenant_config_leader 1"
  'The TenantConfig "bad" is invalid'
  "tcc-tenant-config-controller-"
  "pod prints: provider=stripe checkout-flow=v2"
  "the change reached the file inside the pod after"
  "the pod's watch starts with: "
  "the change reached the pod's watch after"
)
for line in "${demo_checks[@]}"; do
  grep -qF -- "$line" "$demo_log" || { cat "$demo_log"; echo "demo output lacks: $line"; exit 1; }
done
if grep -q '"db-password"' <(grep -A1 'get configmap payments-config' "$demo_log"); then
  echo "a secure value reached the ConfigMap"; exit 1
fi
echo "demo: ${#demo_checks[@]} checks passed"

step "all tests passed in $((SECONDS - started))s"
