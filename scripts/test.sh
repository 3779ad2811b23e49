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

step "test environment up"
trap 'scripts/testenv.sh down' EXIT
scripts/testenv.sh up
# shellcheck source=/dev/null
source "$(scripts/testenv.sh env)"

step "cargo test"
cargo test --locked --no-fail-fast -- "$@"

step "all tests passed in $((SECONDS - started))s"
