#!/usr/bin/env bash
# Benchmarks on the local stack (release build), each printing a markdown table.
#
#   ./scripts/bench.sh latency [--changes N] [--background-rate R]
#       store write → ConfigMap updated through the event path, idle and under
#       R background changes/s (defaults: 500 changes, 50/s)
#   ./scripts/bench.sh scale [--objects N] [--concurrency C] [--steady-resync D] [--cycles K] [--cold-only] [--settle D]
#       cold convergence against the raw-write limit, shared fan-out, steady-state
#       AWS/Kubernetes calls against polling, controller memory (defaults: 1000
#       objects, concurrency 16, 3 resyncs of 60s each standing for 10 minutes;
#       --cold-only: convergence, limit and memory only, for large N; --cycles 0: no steady state;
#       --settle D: the cold-start controller idles D before its steady RSS is read)
#   ./scripts/bench.sh freshness [--samples N] [--spacing S] [--rollout-window W]
#       store write → ConfigMap → the mounted file inside a pod with and without
#       refresh, and the env of a rolled-out Deployment, on the local
#       node with kubelet defaults (defaults: 16 objects, changes 3s apart, window 10s)
#   ./scripts/bench.sh noisy [--noisy-tenants T] [--noisy-objects N] [--entries E] [--samples S] [--edit-every D]
#       a quiet tenant's store change → ConfigMap and new TenantConfig → Ready,
#       idle and while T noisy tenants drain N objects × E Parameter Store entries
#       and edit them every D; the noisy tenants' drain time and write rate
#       (defaults: 1 tenant, 40 objects, 64 entries, 20 samples, an edit every 250ms)
#   ./scripts/bench.sh config-api [--watches N] [--tokens T] [--tenants K] [--samples S] [--hold D]
#       store write → message at the config service's watching clients, side by
#       side with store write → ConfigMap, for 1 and N watches over T distinct
#       ServiceAccount tokens of K tenants; controller RSS and TokenReviews per
#       token (defaults: 1000 watches, 100 tokens, 4 tenants, 30 samples;
#       --hold D keeps the watches open D before measuring)
#
# Runs on its own stack (.testenv/bench; freshness adds the node) and stops it afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
what=${1:-}
[[ -n $what ]] || { sed -n '2,29p' "$0" >&2; exit 2; }
shift
case "$what" in
  latency) bench=event_latency ;;
  scale) bench=scale ;;
  freshness) bench=pod_freshness; node=--node ;;
  noisy) bench=noisy ;;
  config-api) bench=config_api ;;
  *) echo "unknown benchmark: $what" >&2; exit 2 ;;
esac
export TCC_STATE_DIR=${TCC_STATE_DIR:-$ROOT/.testenv/bench}
echo "building (release) ..." >&2
cargo bench --locked --no-run --bench "$bench" >&2
trap 'scripts/testenv.sh down >&2' EXIT
scripts/testenv.sh up ${node:-} >&2
# shellcheck source=/dev/null
source "$(scripts/testenv.sh env)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "command: ./scripts/bench.sh $what $*"
RUST_LOG=${RUST_LOG:-warn} cargo bench --locked --bench "$bench" -- "$@"
