//! The periodic resync, the safety net for lost events and out-of-band drift.
//!
//! In bulk mode, each store is read once per tenant (a DynamoDB Query of the
//! tenant's partition, one recursive walk of the tenant's Parameter Store
//! path) and each included shared path once; an object is reconciled only
//! when what it last read differs from that, or when it has no successful
//! reconcile of its current generation on record. An object whose stores did
//! not change costs no call of its own. A store without bulk reads, or one
//! whose bulk read failed, leaves its objects to their own reconcile (which
//! reports the failure in their status).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, warn};

use super::{context::Context, last_read::LastRead, settings::ResyncMode};
use crate::{
    api::Guarded,
    metrics::ResyncLabels,
    store::{Backend, Location, StoreError, StoreState, Value, entries_digest},
};

/// Tenants (or shared paths) read at once per resync.
const READ_CONCURRENCY: usize = 4;

/// What the stores hold now: a content digest per (store, location) and per
/// (store, shared path). Whatever is missing could not be read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fresh {
    pub stores: HashMap<String, HashMap<Location, u64>>,
    pub shared: HashMap<(String, String), u64>,
}

/// What to read: for each store, the locations of each tenant; the shared paths.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub stores: BTreeMap<String, BTreeMap<String, BTreeSet<Location>>>,
    pub shared: BTreeSet<(String, String)>,
}

impl Reads {
    /// Adds the reads that can tell whether a recorded object is current. Pure.
    pub fn add(&mut self, record: &LastRead) {
        for (store, _) in &record.stores {
            let tenants = self.stores.entry(store.clone()).or_default();
            tenants.entry(record.location.tenant.clone()).or_default().insert(record.location.clone());
        }
        for (store, path, _) in &record.includes {
            self.shared.insert((store.clone(), path.clone()));
        }
    }
}

/// Whether an object must be reconciled: no record of a successful reconcile
/// of its current generation, or a store or include that reads differently
/// now (or could not be read). Pure.
pub fn is_stale(record: Option<&LastRead>, generation: Option<i64>, fresh: &Fresh) -> bool {
    let Some(record) = record else { return true };
    record.generation != generation
        || record.stores.iter().any(|(store, digest)| {
            fresh.stores.get(store).and_then(|locations| locations.get(&record.location)) != Some(digest)
        })
        || record
            .includes
            .iter()
            .any(|(store, path, digest)| fresh.shared.get(&(store.clone(), path.clone())) != Some(digest))
}

/// The objects one resync reconciles. Objects that do not deserialize wait
/// for a change of their own and are left out.
pub async fn due(ctx: &Context, objects: &[Arc<Guarded>]) -> Vec<ObjectRef<Guarded>> {
    // The start-up pass ends here: from now on this bulk read is the safety
    // net, and a first apply reads its path on its own.
    ctx.stores.backend_ctx.tenant_walks.close();
    let valid = objects.iter().filter_map(|guarded| Some((ObjectRef::from_obj(&**guarded), guarded.0.as_ref().ok()?)));
    if ctx.settings.resync_mode == ResyncMode::PerObject {
        return valid.map(|(object, _)| object).collect();
    }
    // The records are unpacked one at a time, never all at once (see LastReads::for_each).
    let last_reads = &ctx.ledgers.last_reads;
    let mut reads = Reads::default();
    last_reads.for_each(|record| reads.add(record));
    let fresh = read(ctx, reads).await;
    let mut due = Vec::new();
    let mut current = 0usize;
    // A shared path that changed unseen may still be cached: the reconciles
    // it triggers must read it afresh.
    let mut changed_paths = BTreeSet::new();
    for (object, tc) in valid {
        let record = last_reads.get(&object);
        for (store, path, digest) in record.iter().flat_map(|r| &r.includes) {
            let key = (store.clone(), path.clone());
            if fresh.shared.get(&key).is_some_and(|d| d != digest) {
                changed_paths.insert(key);
            }
        }
        // A record made during the bulk read is at least as new as it: a
        // difference reconciles the object, never the other way round.
        if is_stale(record.as_ref(), tc.metadata.generation, &fresh) {
            due.push(object);
        } else {
            current += 1;
        }
    }
    for (store, path) in changed_paths {
        ctx.stores.shared_cache.invalidate_path(&store, &path);
    }
    let count = |result, n: usize| ctx.metrics.resync_objects.get_or_create(&ResyncLabels { result }).inc_by(n as u64);
    count("stale", due.len());
    count("current", current);
    info!(stale = due.len(), current, "resync compared the stores with what each object last read");
    due
}

/// Performs the bulk reads. Failures leave gaps (their objects reconcile).
async fn read(ctx: &Context, reads: Reads) -> Fresh {
    let stores = ctx.caches.config_stores.state();
    let spec_of = |name: &str| stores.iter().find(|s| s.metadata.name.as_deref() == Some(name)).map(|s| &s.spec);
    let mut fresh = Fresh::default();
    let mut tenant_reads = Vec::new();
    for (store, tenants) in reads.stores {
        let Some(spec) = spec_of(&store) else { continue };
        let backend = match ctx.stores.backend(&store, spec) {
            Ok(backend) => backend,
            Err(e) => {
                debug!(store, error = %e, "resync: store not usable; its objects reconcile one by one");
                continue;
            }
        };
        for (tenant, locations) in tenants {
            let locations = locations.into_iter().collect();
            tenant_reads.push(read_tenant(store.clone(), backend.clone(), tenant, locations));
        }
    }
    let mut results = futures::stream::iter(tenant_reads).buffer_unordered(READ_CONCURRENCY);
    while let Some((store, tenant, locations, result)) = results.next().await {
        match result {
            Some(Ok(states)) => {
                let digests = fresh.stores.entry(store).or_default();
                for (location, state) in locations.into_iter().zip(states) {
                    digests.insert(location, state.content_digest());
                }
            }
            Some(Err(e)) => {
                warn!(store, tenant, error = %e, "resync: bulk read failed; its objects reconcile one by one")
            }
            // No bulk reads: its objects reconcile one by one.
            None => {}
        }
    }
    let mut path_reads = Vec::new();
    for (store, path) in &reads.shared {
        if let Some(backend) = spec_of(store).and_then(|spec| ctx.stores.backend(store, spec).ok()) {
            path_reads.push(read_path(store.clone(), path.clone(), backend));
        }
    }
    let mut results = futures::stream::iter(path_reads).buffer_unordered(READ_CONCURRENCY);
    while let Some((store, path, result)) = results.next().await {
        match result {
            Some(Ok(entries)) => {
                fresh.shared.insert((store, path), entries_digest(&entries));
            }
            Some(Err(e)) => warn!(store, path, error = %e, "resync: shared path read failed"),
            None => {}
        }
    }
    fresh
}

type TenantRead = (String, String, Vec<Location>, Option<Result<Vec<StoreState>, StoreError>>);

async fn read_tenant(store: String, backend: Arc<dyn Backend>, tenant: String, locations: Vec<Location>) -> TenantRead {
    let result = match backend.bulk_read() {
        // In the tenant's turn: a resync of many tenants shares the read budget
        // with their reconciles fairly.
        Some(bulk) => Some(crate::store::on_behalf_of(&tenant, bulk.read_tenant(&tenant, &locations)).await),
        None => None,
    };
    (store, tenant, locations, result)
}

type PathRead = (String, String, Option<Result<BTreeMap<String, Value>, StoreError>>);

async fn read_path(store: String, path: String, backend: Arc<dyn Backend>) -> PathRead {
    let result = match backend.shared_paths() {
        Some(shared) => Some(shared.read_shared(&path).await),
        None => None,
    };
    (store, path, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(tenant: &str, config_type: &str) -> Location {
        Location { tenant: tenant.into(), environment: None, config_type: config_type.into() }
    }

    fn record(tenant: &str, config_type: &str, stores: &[(&str, u64)], includes: &[(&str, &str, u64)]) -> LastRead {
        LastRead {
            generation: Some(1),
            location: location(tenant, config_type),
            stores: stores.iter().map(|(s, d)| (s.to_string(), *d)).collect(),
            includes: includes.iter().map(|(s, p, d)| (s.to_string(), p.to_string(), *d)).collect(),
        }
    }

    #[test]
    fn reads_group_locations_by_store_and_tenant_and_shared_paths_once() {
        let records = [
            record("acme", "payments", &[("db", 1), ("ssm", 2)], &[("ssm", "/shared/common", 3)]),
            record("acme", "checkout", &[("db", 4)], &[("ssm", "/shared/common", 3)]),
            record("globex", "payments", &[("db", 5)], &[]),
        ];
        let mut reads = Reads::default();
        records.iter().for_each(|record| reads.add(record));
        assert_eq!(reads.stores.len(), 2);
        assert_eq!(reads.stores["db"].len(), 2, "one read per tenant");
        assert_eq!(reads.stores["db"]["acme"].len(), 2);
        assert_eq!(reads.stores["ssm"].keys().collect::<Vec<_>>(), ["acme"]);
        assert_eq!(reads.shared.len(), 1, "a shared path is read once however many include it");
    }

    #[test]
    fn only_changed_unread_or_unrecorded_objects_are_stale() {
        let recorded = record("acme", "payments", &[("db", 1)], &[("ssm", "/shared/common", 3)]);
        let mut fresh = Fresh::default();
        fresh.stores.entry("db".into()).or_default().insert(location("acme", "payments"), 1);
        fresh.shared.insert(("ssm".into(), "/shared/common".into()), 3);
        assert!(!is_stale(Some(&recorded), Some(1), &fresh), "nothing changed");
        assert!(is_stale(None, Some(1), &fresh), "never reconciled (or its last reconcile failed)");
        assert!(is_stale(Some(&recorded), Some(2), &fresh), "the spec changed since");

        let mut changed = Fresh { shared: fresh.shared.clone(), ..Default::default() };
        changed.stores.entry("db".into()).or_default().insert(location("acme", "payments"), 9);
        assert!(is_stale(Some(&recorded), Some(1), &changed), "the store changed (a lost event)");

        let mut unread = Fresh { shared: fresh.shared.clone(), ..Default::default() };
        unread.stores.entry("db".into()).or_default();
        assert!(is_stale(Some(&recorded), Some(1), &unread), "the store could not be read");

        let mut shared_changed = Fresh { stores: fresh.stores.clone(), ..Default::default() };
        shared_changed.shared.insert(("ssm".into(), "/shared/common".into()), 4);
        assert!(is_stale(Some(&recorded), Some(1), &shared_changed), "an include changed");
    }
}
