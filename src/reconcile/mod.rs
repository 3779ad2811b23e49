//! The TenantConfig reconciler: a pipeline of pure steps between thin IO
//! steps, one file each (DESIGN.md §8):
//!
//! [`resolve`] (IO: namespace, ConfigStores, existing ConfigMap/Secret) →
//! [`plan`] (pure, every refusal) → [`sync_stores`] (IO: limits, sweep,
//! writes or reuse of the last read, includes) → [`render`] (pure) →
//! [`project`] (IO) → [`status::next_status`] (pure) and one patch.
//! [`outcome`] is the one place that maps how a reconcile ended to status,
//! Events and requeue. Deletion: [`cleanup`]. The services every reconcile
//! shares: [`context`]; what it remembers per object: [`ledgers`].

mod admit;
pub mod cleanup;
pub mod context;
pub mod echo;
pub mod error;
pub mod last_read;
pub mod ledgers;
pub mod outcome;
pub mod plan;
pub mod project;
pub mod render;
pub mod resolve;
pub mod resync;
pub mod settings;
pub mod status;
pub mod sync_stores;
#[cfg(test)]
mod testing;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};
use tracing::{info, instrument, warn};

pub use context::Context;
pub use error::Error;
pub use outcome::error_policy;
pub use settings::Settings;

use crate::{
    api::{Guarded, TenantConfig, conditions::reason, names::FINALIZER},
    store::{self, StoreRef},
    workloads,
};
use last_read::{LastRead, OwnStores, Reusable};
use outcome::Halt;
use resolve::Resolved;
use status::{Projected, Verdict};

/// How long a reconcile waits for the caches' first listing before it backs off.
const CACHE_SYNC_WAIT: Duration = Duration::from_secs(30);

/// Reconciles one TenantConfig as the watch delivered it, holding one of the
/// work permits (`--concurrency`) while it works.
pub async fn reconcile(guarded: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let permits = ctx.clone();
    permits.ledgers.work_permits.run(reconcile_with_permit(guarded, ctx)).await
}

async fn reconcile_with_permit(guarded: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(&*guarded);
    let started = Instant::now();
    ctx.ledgers.retries.started(&key);
    let shared_only = ctx.ledgers.requests.started(&key, started);
    ctx.metrics.reconciles_in_flight.inc();
    let mut timer = ReconcileTimer { ctx: &ctx, started, error: None };
    let result = match &guarded.0 {
        Ok(tc) => reconcile_valid(Arc::new(tc.clone()), &ctx, &key, started, shared_only).await,
        Err(invalid) => {
            // Nothing typed can be done with it (not even a status patch): say so
            // once and wait for the object to change.
            let meta = &invalid.metadata;
            warn!(namespace = meta.namespace.as_deref(), name = meta.name.as_deref(), error = %invalid.error, "TenantConfig does not deserialize");
            let reference = ObjectReference {
                api_version: Some(TenantConfig::api_version(&()).into()),
                kind: Some(TenantConfig::kind(&()).into()),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                ..Default::default()
            };
            let note = format!("object does not match the TenantConfig schema: {}", invalid.error);
            ctx.kube.publish_for(&reference, EventType::Warning, reason::VALIDATION_FAILED, note).await;
            Ok(Action::await_change())
        }
    };
    match &result {
        Ok(_) => {
            ctx.ledgers.retries.succeeded(&key);
            ctx.metrics.objects_backing_off.set(ctx.ledgers.retries.backing_off() as i64);
            ctx.outbound.progress.succeeded(&key, started);
        }
        Err(e) => timer.error = Some(e.metric_label()),
    }
    result
}

#[instrument(skip_all, fields(namespace = tc.metadata.namespace.as_deref(), name = %tc.name_any(), config_type = tc.config_type(), tenant))]
async fn reconcile_valid(
    tc: Arc<TenantConfig>,
    ctx: &Context,
    key: &ObjectRef<Guarded>,
    started: Instant,
    shared_only: bool,
) -> Result<Action, Error> {
    // Routing and cleanup need the complete set of stores and namespaces: a
    // decision taken on a partial cache (no store known → nothing to clean up)
    // is never taken; the object is retried with backoff instead.
    let mut synced = ctx.caches.synced.clone();
    if !matches!(tokio::time::timeout(CACHE_SYNC_WAIT, synced.wait_for(|s| *s)).await, Ok(Ok(_))) {
        return Err(Error::CachesNotSynced);
    }
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    let api = Api::<TenantConfig>::namespaced(ctx.kube.client.clone(), &ns);
    // From the namespace cache; its AWS calls wait for rate tokens in its turn.
    let tenant = ctx.cached_tenant(&ns);
    let reconcile = finalizer(&api, FINALIZER, tc, |event| async {
        match event {
            Finalizer::Apply(tc) => apply(&tc, ctx, key, tenant.as_deref(), started, shared_only).await,
            Finalizer::Cleanup(tc) => cleanup::cleanup(&tc, ctx).await,
        }
    });
    match store::on_behalf_of(tenant.as_deref().unwrap_or_default(), reconcile).await {
        // A second cleanup from a cache that had not yet seen the object go
        // (its ConfigMap's deletion asked for one): gone is what it wanted.
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    }
}

/// Counts a reconcile and its duration when dropped, also when the reconcile
/// future is dropped mid-way (shutdown).
struct ReconcileTimer<'a> {
    ctx: &'a Context,
    started: Instant,
    error: Option<&'static str>,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.ctx.metrics.reconciles_in_flight.dec();
        self.ctx.metrics.reconciled(self.error, self.started.elapsed().as_secs_f64());
    }
}

/// The driver of one reconcile of an object that is not being deleted:
/// resolve → plan → sync_stores → render → project, then one status write.
/// `shared_only`: only changes under shared paths asked for it.
async fn apply(
    tc: &TenantConfig,
    ctx: &Context,
    key: &ObjectRef<Guarded>,
    tenant: Option<&str>,
    started: Instant,
    shared_only: bool,
) -> Result<Action, Error> {
    // A shared-path change leaves the object's own stores as its last
    // successful reconcile of this spec found them: that read may be reused
    // (their own events, and the resync for a lost one, ask for a full
    // reconcile). One walk of the shared path then serves every object
    // including it.
    // A tenant's share of the reconcile slots, taken before any API or AWS
    // call; without one, the slot goes to another tenant's object.
    let _slot = tenant_slot(ctx, tc, key, tenant).await.inspect_err(|_| {
        // Waiting its turn keeps what asked for it: a shared-path change
        // still may reuse the own-store reads.
        if shared_only {
            ctx.ledgers.requests.requested_by_shared_change(key);
        } else {
            ctx.ledgers.requests.requested(key);
        }
    })?;
    let reusable = ctx.ledgers.last_reads.take(key, tc.metadata.generation).filter(|_| shared_only);
    let resolved = resolve::resolve(ctx, tc).await?;
    let labels = resolved.labels.as_ref();
    let done = match pipeline(tc, ctx, key, &resolved, reusable).await {
        Ok(done) => done,
        Err(halt) => return outcome::halted(ctx, tc, labels, halt).await,
    };
    if done.projected_now {
        ctx.outbound.progress.projected(key, started);
    }
    outcome::write_status(ctx, tc, labels, done.verdict).await?;
    ctx.ledgers.last_reads.record(key, done.last_read, done.own_stores);
    ctx.outbound.projections.record(&tc.namespace().unwrap_or_default(), tc.object_ref(&()), done.projected);
    // Events bring it back when its stores change; the resync when one was lost.
    Ok(Action::await_change())
}

/// One of the object's tenant's slots (`--tenant-concurrency`), its tenant
/// from the namespace cache alone; none needed without a tenant (the reconcile
/// only says so) or for a namespace the cache does not hold yet (just created).
/// Waiting is said on the object in an Event, at most once a minute per tenant.
async fn tenant_slot(
    ctx: &Context,
    tc: &TenantConfig,
    key: &ObjectRef<Guarded>,
    tenant: Option<&str>,
) -> Result<Option<ledgers::TenantSlot>, Error> {
    let Some(tenant) = tenant else { return Ok(None) };
    let limit = ctx.settings.tenant_concurrency;
    match ctx.ledgers.tenant_slots.try_acquire(tenant, limit, key) {
        Ok(slot) => Ok(Some(slot)),
        Err(deferred) => {
            if deferred.tell {
                let note = format!(
                    "waiting for its tenant's fair share: tenant {tenant} has {limit} reconciles under way \
                     (--tenant-concurrency) and {} object(s) waiting; each starts when one of them ends",
                    deferred.waiting
                );
                ctx.kube.publish(tc, EventType::Normal, reason::FAIR_SHARE, note).await;
            }
            Err(Error::TenantBusy { tenant: tenant.into(), limit })
        }
    }
}

/// What a reconcile that got through every step leaves.
struct Done {
    verdict: Verdict,
    projected_now: bool,
    last_read: LastRead,
    own_stores: OwnStores,
    projected: Vec<(workloads::refs::Reference, workloads::decide::Seen)>,
}

/// The steps between resolve and the status write.
async fn pipeline(
    tc: &TenantConfig,
    ctx: &Context,
    key: &ObjectRef<Guarded>,
    resolved: &Resolved,
    reusable: Option<Reusable>,
) -> Result<Done, Halt> {
    let stores = StoreRef::all(&resolved.config_stores);
    let claimed = |location: &_| ctx.outbound.claims.claimed_by_another(location, key);
    let plan = plan::plan(tc, resolved.identity.clone(), &stores, ctx.settings.secure_projection, claimed)?;
    plan::check_existing(tc, &plan, &resolved.existing)?;
    admit::admit(ctx, &plan, &stores)?;
    tracing::Span::current().record("tenant", plan.location.tenant.as_str());
    let synced = sync_stores::sync(ctx, tc, &plan, reusable).await?;
    let store_message = synced.written.message();
    let stores = synced.written.summaries.clone();
    let rendered = render::render(synced.layers(), plan.secret_name.is_some()).map_err(|e| Halt::Unprojectable {
        reason: reason::VALIDATION_FAILED,
        why: e.to_string(),
        store_message: store_message.clone(),
        stores: stores.clone(),
    })?;
    let applied = project::apply(ctx, tc, &plan, &resolved.existing, &rendered).await.map_err(|e| {
        match project::refused(&e) {
            Some(why) => Halt::Unprojectable {
                reason: reason::PROJECTION_REFUSED,
                why,
                store_message: store_message.clone(),
                stores: stores.clone(),
            },
            None => Halt::Error(e),
        }
    })?;
    let projected_now = applied.wrote_anything();
    if projected_now {
        info!(digest = %rendered.digest, keys = rendered.keys(), "projected");
    }
    let secret_named = tc.spec.projection.as_ref().is_some_and(|p| p.secret_name.is_some());
    let mut message = rendered.message(secret_named);
    if !synced.written.shadowed.is_empty() {
        let names = synced.written.shadowed.join(", ");
        message.push_str(&format!("; left out, another entry has the same key: {names}"));
    }
    let projection = Projected {
        config_map: tc.config_map_name().into(),
        keys: rendered.keys(),
        digest: rendered.digest.clone(),
        written: projected_now,
    };
    let mut verdict = Verdict::reconciled(store_message, message, stores, projection);
    if !synced.written.unclaimed.is_empty() {
        verdict = verdict.with_key_conflicts(&synced.written.unclaimed);
    }
    Ok(Done {
        verdict,
        projected_now,
        own_stores: synced.own_stores(),
        projected: project::projected(tc, &plan, &resolved.existing, &rendered, &applied),
        last_read: synced.last_read,
    })
}
