//! The reconcile's `sync_stores` step: check each store's limits, sweep, write
//! (or stand on the last read when only a shared path changed), read the
//! includes. Thin: what to do was decided by [`super::plan`]; the backends
//! diff and write.

use std::sync::Arc;

use kube::runtime::events::EventType;
use tracing::{debug, info};

use super::{
    context::Context,
    error::store_failure_reason,
    last_read::{LastRead, OwnStores, Reusable},
    plan::{ReconcilePlan, Refusal, StoreWrite},
    render::{Layer, Source},
    status::Verdict,
};
use crate::{
    api::{StoreSummary, TenantConfig},
    store::{Backend, Desired, StoreError, StoreState, entries_digest},
};

/// Why the step stopped.
pub enum SyncError {
    /// A store's limits refuse the desired entries; nothing was written.
    Refused(Refusal),
    /// A store's backend could not be built (retried with backoff).
    Backend(StoreError),
    /// A store call failed; `stores`: the object's stores, written, when only
    /// an include could not be read.
    Failed { failure: Box<StoreFailure>, stores: Option<Vec<StoreSummary>> },
}

impl From<StoreFailure> for SyncError {
    fn from(failure: StoreFailure) -> Self {
        SyncError::Failed { failure: Box::new(failure), stores: None }
    }
}

/// What the stores hold for the object now, and the includes.
pub struct Synced {
    pub written: Written,
    pub includes: Vec<Layer>,
    /// What a later reconcile (or the resync) may stand on.
    pub last_read: LastRead,
}

impl Synced {
    /// Every layer of the projection.
    pub fn layers(&self) -> Vec<Layer> {
        self.includes.iter().chain(&self.written.layers).cloned().collect()
    }

    /// The object's own stores as this reconcile left them, for reuse.
    pub fn own_stores(&self) -> OwnStores {
        let written = &self.written;
        OwnStores {
            summaries: written.summaries.clone(),
            layers: written.layers.clone(),
            shadowed: written.shadowed.clone(),
            unclaimed: written.unclaimed.clone(),
        }
    }
}

/// The step: prepare, then sweep and write (unless the last read stands),
/// then the includes.
pub async fn sync(
    ctx: &Context,
    tc: &TenantConfig,
    plan: &ReconcilePlan<'_>,
    reusable: Option<Reusable>,
) -> Result<Synced, SyncError> {
    let prepared = prepare(ctx, plan)?;
    let (swept, written) = match reusable.and_then(|r| reused(&r, plan)) {
        Some(written) => {
            debug!("only a shared path changed: the last read of the own stores stands");
            (0, written)
        }
        None => {
            let swept = sweep(ctx, tc, plan).await?;
            (swept, write(ctx, tc, plan, prepared).await?)
        }
    };
    let includes = match read_includes(ctx, plan).await {
        Ok(includes) => includes,
        Err(failure) => return Err(SyncError::Failed { failure: Box::new(failure), stores: Some(written.summaries) }),
    };
    if swept + written.changed_keys > 0 {
        info!(written = swept + written.changed_keys, "stores updated");
    }
    let last_read = LastRead {
        generation: tc.metadata.generation,
        location: plan.location.clone(),
        stores: written.reads.clone(),
        includes: plan
            .includes
            .iter()
            .zip(&includes)
            .map(|(include, layer)| (include.store.to_string(), include.path.clone(), entries_digest(&layer.entries)))
            .collect(),
    };
    Ok(Synced { written, includes, last_read })
}

/// The store writes' outcome, as if they had run and found nothing to do —
/// if the plan is the one the last reconcile carried out: the same location,
/// the same stores, nothing to sweep or move out.
fn reused(last: &Reusable, plan: &ReconcilePlan<'_>) -> Option<Written> {
    let mut planned: Vec<&str> = plan.writes.iter().map(|w| w.store).collect();
    let mut held: Vec<&str> = last.own.summaries.iter().map(|s| s.name.as_str()).collect();
    planned.sort_unstable();
    held.sort_unstable();
    let same = last.read.location == plan.location
        && plan.sweep.is_empty()
        && plan.writes.iter().all(|w| w.routed_here)
        && planned == held;
    same.then(|| Written {
        summaries: last.own.summaries.clone(),
        layers: last.own.layers.clone(),
        reads: last.read.stores.clone(),
        changed_keys: 0,
        shadowed: last.own.shadowed.clone(),
        unclaimed: last.own.unclaimed.clone(),
    })
}

/// A store call that failed, with the message status reports.
pub struct StoreFailure {
    pub error: StoreError,
    pub message: String,
}

impl StoreFailure {
    pub fn reason(&self) -> &'static str {
        store_failure_reason(&self.error)
    }

    /// The status it leads to: retried when transient, else stalled.
    pub fn verdict(&self) -> Verdict {
        if self.error.is_transient() {
            Verdict::retrying(self.reason(), self.message.clone())
        } else {
            Verdict::refused(self.reason(), self.message.clone())
        }
    }
}

/// A planned write whose backend is built and whose limits are checked.
pub struct Prepared<'p, 'a> {
    write: &'p StoreWrite<'a>,
    backend: Arc<dyn Backend>,
}

/// Builds each store's backend and checks, without a call, every limit the
/// desired entries must meet: a refused object writes nothing anywhere.
fn prepare<'p, 'a>(ctx: &Context, plan: &'p ReconcilePlan<'a>) -> Result<Vec<Prepared<'p, 'a>>, SyncError> {
    let mut prepared = Vec::with_capacity(plan.writes.len());
    for write in &plan.writes {
        let backend = ctx.stores.backend(write.store, write.spec).map_err(SyncError::Backend)?;
        if let Err(e) = backend.validate(&plan.location, &write.desired) {
            let message = format!("store {}: {e}", write.store);
            return Err(SyncError::Refused(Refusal::new(store_failure_reason(&e), message)));
        }
        prepared.push(Prepared { write, backend });
    }
    Ok(prepared)
}

/// Deletes this object's keys from the stores an interrupted reconcile may
/// have written to. Returns how many keys went.
async fn sweep(ctx: &Context, tc: &TenantConfig, plan: &ReconcilePlan<'_>) -> Result<usize, StoreFailure> {
    let mut deleted_keys = 0;
    for store in &plan.sweep {
        // A store this object cannot use (misconfigured, no access) holds nothing of its.
        let backend = match ctx.stores.backend(store.name, store.spec) {
            Ok(backend) => backend,
            Err(e) => {
                debug!(store = store.name, error = %e, "sweep skipped a store");
                continue;
            }
        };
        match backend.delete_managed(&plan.location, &plan.owner).await {
            Ok(deleted) if !deleted.is_empty() => {
                deleted_keys += deleted.len();
                let note = format!("{}: deleted {} key(s) left by an interrupted reconcile", store.name, deleted.len());
                ctx.kube.publish(tc, EventType::Normal, "StoreCleaned", note).await;
            }
            Ok(_) => {}
            Err(error) if error.is_transient() => {
                let message =
                    format!("store {} (checked for keys left by an interrupted reconcile): {error}", store.name);
                return Err(StoreFailure { error, message });
            }
            Err(e) => debug!(store = store.name, error = %e, "sweep skipped a store"),
        }
    }
    Ok(deleted_keys)
}

/// What the store writes left: the stores and layers of the projection.
pub struct Written {
    pub summaries: Vec<StoreSummary>,
    pub layers: Vec<Layer>,
    /// `(store, content digest)` of each layer, for the resync's comparison.
    pub reads: Vec<(String, u64)>,
    /// Keys written or deleted.
    pub changed_keys: usize,
    /// Other writers' entries left out: another entry has the same key.
    pub shadowed: Vec<String>,
    /// `store: key` of each desired key another writer holds, not adopted.
    pub unclaimed: Vec<String>,
}

impl Written {
    /// The StoreSynced message. State, not the last action: a message that
    /// changed with every write would cost one more status write (and
    /// reconcile) after each of them.
    pub fn message(&self) -> String {
        let managed_keys: i32 = self.summaries.iter().map(|s| s.keys).sum();
        format!("{managed_keys} managed key(s) in {} store(s)", self.summaries.len())
    }
}

/// Applies each store's desired entries. One Event for all the stores a
/// reconcile wrote (each Event is an API write), one per drift correction.
async fn write(
    ctx: &Context,
    tc: &TenantConfig,
    plan: &ReconcilePlan<'_>,
    prepared: Vec<Prepared<'_, '_>>,
) -> Result<Written, StoreFailure> {
    let mut written = Written {
        summaries: Vec::new(),
        layers: Vec::new(),
        reads: Vec::new(),
        changed_keys: 0,
        shadowed: Vec::new(),
        unclaimed: Vec::new(),
    };
    let mut notes = Vec::new();
    for Prepared { write, backend } in prepared {
        let report = match backend.apply(&plan.location, &write.desired).await {
            Ok(report) => report,
            Err(error) => {
                publish_written(ctx, tc, &notes).await;
                return Err(StoreFailure { message: format!("store {}: {error}", write.store), error });
            }
        };
        if report.wrote_anything() {
            written.changed_keys += report.written.len() + report.deleted.len();
            notes.push(format!(
                "{}: wrote {} key(s), deleted {} key(s) at {}",
                write.store,
                report.written.len(),
                report.deleted.len(),
                backend.describe(&plan.location)
            ));
        }
        if !report.drift_corrected.is_empty() {
            let keys = report.drift_corrected.iter().cloned().collect::<Vec<_>>().join(", ");
            let note = format!("{}: reverted out-of-band changes to {keys}", write.store);
            ctx.kube.publish(tc, EventType::Normal, "DriftCorrected", note).await;
        }
        // A store the object only used before (its keys just left) is not a
        // layer: the next reconcile would not read it, and the ConfigMap must
        // not depend on which reconcile wrote it last.
        if write.routed_here {
            written.summaries.push(StoreSummary {
                name: write.store.to_string(),
                kind: backend.kind().into(),
                location: backend.describe(&plan.location),
                keys: report.state.managed.len() as i32,
            });
            written.reads.push((write.store.to_string(), report.state.content_digest()));
            written.shadowed.extend(report.state.shadowed.iter().cloned());
            written.unclaimed.extend(unclaimed(&write.desired, &report.state).map(|k| format!("{}: {k}", write.store)));
            let source = Source::Store { precedence: backend.precedence(), name: write.store.to_string() };
            written.layers.push(Layer { source, entries: Arc::new(report.state.entries) });
        }
    }
    publish_written(ctx, tc, &notes).await;
    Ok(written)
}

/// Desired keys the store holds for another writer (not adopted).
fn unclaimed<'a>(desired: &'a Desired, state: &'a StoreState) -> impl Iterator<Item = &'a String> {
    desired
        .entries
        .keys()
        .filter(move |k| !desired.adopt_existing && state.entries.contains_key(*k) && !state.managed.contains(*k))
}

async fn publish_written(ctx: &Context, tc: &TenantConfig, notes: &[String]) {
    if !notes.is_empty() {
        ctx.kube.publish(tc, EventType::Normal, "StoreWritten", notes.join("; ")).await;
    }
}

/// Reads every include (through the shared cache: one read per path however
/// many objects include it).
async fn read_includes(ctx: &Context, plan: &ReconcilePlan<'_>) -> Result<Vec<Layer>, StoreFailure> {
    let mut layers = Vec::with_capacity(plan.includes.len());
    for include in &plan.includes {
        let failed = |error: StoreError| StoreFailure { message: format!("include {}: {error}", include.path), error };
        let backend = ctx.stores.backend(include.store, include.spec).map_err(failed)?;
        let Some(shared) = backend.shared_paths() else {
            return Err(failed(StoreError::Unsupported { backend: backend.kind(), what: "shared paths" }));
        };
        let entries = ctx
            .stores
            .shared_cache
            .get(include.store, &include.path, || shared.read_shared(&include.path))
            .await
            .map_err(failed)?;
        layers.push(Layer { source: Source::Shared { index: include.index }, entries });
    }
    Ok(layers)
}
