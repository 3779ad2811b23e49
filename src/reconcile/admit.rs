//! The reconcile's `admit` step, between plan and the store writes: the
//! tenant's quotas in each store ([`crate::store::quota`]). An object that
//! would take its tenant past one writes nothing new (`QuotaExceeded`).

use std::collections::BTreeMap;

use kube::runtime::reflector::ObjectRef;

use super::{
    context::Context,
    plan::{ReconcilePlan, Refusal},
};
use crate::{
    api::{TenantConfig, conditions::reason},
    store::{
        StoreRef,
        quota::Usage,
        routing::{self},
    },
};

/// Admits the plan's writes against the tenant's quotas, and records them.
pub fn admit(ctx: &Context, plan: &ReconcilePlan<'_>, stores: &[StoreRef<'_>]) -> Result<(), Refusal> {
    let tenant = &plan.location.tenant;
    let quotas = &ctx.ledgers.quotas;
    if !quotas.is_seeded() {
        quotas.seed(admitted(ctx, stores));
    }
    let usage: BTreeMap<String, Usage> = plan
        .writes
        .iter()
        .filter(|w| w.routed_here)
        .map(|w| (w.store.to_string(), usage_of(w.desired.entries.iter().map(|(k, v)| (k, &v.value)))))
        .collect();
    let quota_of =
        |name: &str| stores.iter().find(|s| s.name == name).map(|s| s.spec.tenant_quota()).unwrap_or_default();
    quotas.admit(&plan.owner, tenant, &usage, quota_of).map_err(|e| Refusal::new(reason::QUOTA_EXCEEDED, e))
}

/// A deleted object frees its share: the tenant's objects held back by a
/// quota try again now rather than at the next resync.
pub fn release(ctx: &Context, tc: &TenantConfig) {
    let tenant = tenant_of(ctx, tc).unwrap_or_default();
    for held in ctx.ledgers.quotas.forget(&tc.owner_key(), &tenant) {
        if let Some((ns, name)) = held.split_once('/') {
            let _ = ctx.outbound.retries_due.unbounded_send(ObjectRef::new(name).within(ns));
        }
    }
}

/// The tenant of an object's namespace, from the cache.
fn tenant_of(ctx: &Context, tc: &TenantConfig) -> Option<String> {
    ctx.cached_tenant(tc.metadata.namespace.as_deref()?)
}

fn usage_of<'a>(entries: impl Iterator<Item = (&'a String, &'a String)>) -> Usage {
    entries.fold(Usage::default(), |u, (k, v)| Usage {
        entries: u.entries + 1,
        bytes: u.bytes + (k.len() + v.len()) as u64,
    })
}

/// Every object already admitted (it wrote to a store and is not held back by
/// a quota), with its tenant and what its spec routes to each store: one pass
/// over the cache, the first time any object is admitted.
fn admitted(ctx: &Context, stores: &[StoreRef<'_>]) -> Vec<(String, String, BTreeMap<String, Usage>)> {
    let was_admitted = |tc: &TenantConfig| {
        let status = tc.full_status();
        let status = status.as_deref();
        let held = status.into_iter().flat_map(|s| &s.conditions).any(|c| c.reason == reason::QUOTA_EXCEEDED);
        // Its current spec is the one that was admitted (a spec that changed
        // while no controller ran is admitted, or not, by its own reconcile).
        let current = status.and_then(|s| s.observed_generation) == tc.metadata.generation;
        status.is_some_and(|s| !s.stores.is_empty()) && !held && current
    };
    let state = ctx.caches.tenant_configs.state();
    let mut admitted = Vec::new();
    for tc in state.iter().filter_map(|g| g.0.as_ref().ok()) {
        let Some(tenant) = tenant_of(ctx, tc).filter(|_| was_admitted(tc)) else { continue };
        let Ok(routed) = routing::route_entries(&tc.spec, stores) else { continue };
        let usage = routed
            .into_iter()
            .map(|(store, entries)| (store, usage_of(entries.iter().map(|e| (&e.key, &e.value)))))
            .collect();
        admitted.push((tc.owner_key(), tenant, usage));
    }
    admitted
}
