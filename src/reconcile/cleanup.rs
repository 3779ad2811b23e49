//! Deleting a TenantConfig: its keys leave the stores (with
//! `deletionPolicy: Delete`), then its ConfigMap and Secret, then the
//! finalizer lets go.

use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tracing::{debug, info};

use super::{
    context::Context,
    error::{Error, store_failure_reason},
    outcome::write_status,
    plan::{self, recorded_stores},
    project,
    status::Verdict,
};
use crate::{
    api::{DeletionPolicy, TenantConfig, conditions::reason, names::FINALIZER},
    store::{StoreRef, overlap, routing},
    workloads::refs::Kind,
};

pub async fn cleanup(tc: &TenantConfig, ctx: &Context) -> Result<Action, Error> {
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    if tc.spec.deletion_policy == DeletionPolicy::Delete {
        delete_keys(tc, ctx, &ns).await?;
    }
    project::delete(ctx, tc).await?;
    ctx.metrics.set_ready(&tc.owner_key(), None);
    super::admit::release(ctx, tc);
    ctx.ledgers.last_reads.forget(&ObjectRef::new(&tc.name_any()).within(&ns));
    let secret = tc.spec.projection.as_ref().and_then(|p| p.secret_name.clone());
    let projected = std::iter::once((Kind::ConfigMap, tc.config_map_name().to_string()))
        .chain(secret.map(|name| (Kind::Secret, name)));
    ctx.outbound.projections.forget(&ns, projected);
    Ok(Action::await_change())
}

async fn delete_keys(tc: &TenantConfig, ctx: &Context, ns: &str) -> Result<(), Error> {
    let labels = ctx.namespace_labels(ns).await?;
    // Without an identity nothing was ever written for this object.
    let Ok(identity) = ctx.identity(ns, labels.as_ref()) else { return Ok(()) };
    let location = plan::location_of(tc, identity);
    let owner = tc.owner_key();
    // Only the stores this object used: an unrelated broken store must not
    // block its deletion.
    let status = tc.full_status();
    let status = status.as_deref();
    let mut used = recorded_stores(status);
    let store_objects = ctx.caches.config_stores.state();
    // A store the status names but the cache does not know (its ConfigStore
    // was deleted) may still hold this object's keys: releasing the finalizer
    // would leave them behind for good.
    if let Some(missing) = used.iter().find(|name| !store_objects.iter().any(|s| s.name_any() == **name)) {
        let message = format!(
            "deletion waits for ConfigStore {missing}: the status names it but it does not exist; \
             recreate it, or remove the finalizer {FINALIZER} to abandon what it holds"
        );
        let verdict = Verdict::deletion_waits(reason::STORE_UNAVAILABLE, message, false);
        write_status(ctx, tc, labels.as_ref(), verdict).await?;
        return Err(Error::StoreMissing { store: missing.clone() });
    }
    let stores = StoreRef::all(&store_objects);
    if let Ok(routed) = routing::route_entries(&tc.spec, &stores) {
        used.extend(routed.into_keys());
    }
    // As in a reconcile: an unsettled object may have written to stores its
    // status does not name.
    let settled = plan::stores_settled(tc, status);
    // Never through a store that shares its table or paths with another.
    let overlaps = overlap::overlapping(&stores);
    let swept = |name: &str| !settled && !used.contains(name) && !overlaps.contains_key(name);
    info!(stores = ?used, sweep_others = !settled, known_stores = stores.len(), "cleanup: removing this object's keys");
    for store in stores.iter().filter(|s| used.contains(s.name) || swept(s.name)) {
        let backend = ctx.stores.backend(store.name, store.spec)?;
        match backend.delete_managed(&location, &owner).await {
            Ok(deleted) if !deleted.is_empty() => {
                let note = format!(
                    "{}: deleted {} managed key(s) at {}",
                    store.name,
                    deleted.len(),
                    backend.describe(&location)
                );
                ctx.kube.publish(tc, EventType::Normal, "StoreCleaned", note).await;
            }
            Ok(_) => {}
            Err(e) if swept(store.name) && !e.is_transient() => {
                debug!(store = store.name, error = %e, "sweep skipped a store");
            }
            Err(e) => {
                let message = format!("deletion waits for store {}: {e}", store.name);
                let verdict = Verdict::deletion_waits(store_failure_reason(&e), message, e.is_transient());
                write_status(ctx, tc, labels.as_ref(), verdict).await?;
                return Err(e.into());
            }
        }
    }
    Ok(())
}
