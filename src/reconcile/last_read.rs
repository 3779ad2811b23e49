//! What each object's last successful reconcile read from its stores, as
//! digests: the bulk resync compares them with a fresh bulk read and
//! reconciles only the objects whose stores changed since. And the layers
//! themselves, which a reconcile asked for by a shared-path change alone
//! reuses instead of reading the object's own stores again — kept only where
//! that can happen (objects that include a shared path) and only up to
//! [`REUSE_MAX_BYTES`], so that kept values never double what the cache of
//! large TenantConfigs costs (README "Memory").

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::runtime::reflector::ObjectRef;

use super::render::Layer;
use crate::{
    api::{Guarded, StoreSummary},
    store::Location,
};

/// One object's last successful reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRead {
    /// The generation it reconciled (a spec change makes the record stale).
    pub generation: Option<i64>,
    pub location: Location,
    /// `(store, content digest)` of each store the projection read.
    pub stores: Vec<(String, u64)>,
    /// `(store, path, entries digest)` of each include.
    pub includes: Vec<(String, String, u64)>,
}

/// What the object's own stores held at that reconcile (after its writes).
#[derive(Clone, Debug)]
pub struct OwnStores {
    pub summaries: Vec<StoreSummary>,
    pub layers: Vec<Layer>,
    /// Other writers' entries left out (another entry has the same key).
    pub shadowed: Vec<String>,
    /// Desired keys another writer holds, not adopted (`store: key`).
    pub unclaimed: Vec<String>,
}

/// A last reconcile's own-store reads that a new reconcile may stand on
/// (`sync_stores` decides whether it does).
pub struct Reusable {
    pub read: LastRead,
    pub own: Arc<OwnStores>,
}

/// The records, by object. An object without one (never reconciled here, or
/// its last reconcile did not succeed) is reconciled by every resync.
#[derive(Default)]
pub struct LastReads {
    records: Mutex<HashMap<ObjectRef<Guarded>, LastRead>>,
    own: Mutex<HashMap<ObjectRef<Guarded>, Arc<OwnStores>>>,
}

/// The most own-store bytes (keys and values) kept for reuse per object; a
/// larger object reads its stores again on a shared-path change.
pub const REUSE_MAX_BYTES: usize = 16 * 1024;

impl OwnStores {
    /// Keys and values of its layers, in bytes.
    fn bytes(&self) -> usize {
        self.layers.iter().flat_map(|l| l.entries.iter()).map(|(k, v)| k.len() + v.value.len()).sum()
    }

    /// Whether a shared-path change could reuse it: only an object that
    /// includes a shared path is ever reconciled for one, and a large one
    /// reads again rather than keep a second copy of its values.
    fn worth_keeping(&self, read: &LastRead) -> bool {
        !read.includes.is_empty() && self.bytes() <= REUSE_MAX_BYTES
    }
}

impl LastReads {
    pub fn record(&self, object: &ObjectRef<Guarded>, read: LastRead, own: OwnStores) {
        let keep = own.worth_keeping(&read);
        self.records.lock().unwrap().insert(object.clone(), read);
        let mut kept = self.own.lock().unwrap();
        if keep {
            kept.insert(object.clone(), Arc::new(own));
        } else {
            kept.remove(object);
        }
    }

    pub fn forget(&self, object: &ObjectRef<Guarded>) {
        self.records.lock().unwrap().remove(object);
        self.own.lock().unwrap().remove(object);
    }

    /// Takes the object's record away (until the reconcile now starting
    /// succeeds, the resync must not take the object as current) and returns
    /// it if it is of this generation.
    pub fn take(&self, object: &ObjectRef<Guarded>, generation: Option<i64>) -> Option<Reusable> {
        let read = self.records.lock().unwrap().remove(object);
        let own = self.own.lock().unwrap().remove(object);
        Some(Reusable { read: read.filter(|r| r.generation == generation)?, own: own? })
    }

    pub fn snapshot(&self) -> HashMap<ObjectRef<Guarded>, LastRead> {
        self.records.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reconcile::render::Source, store::Value};

    fn own(value_bytes: usize) -> OwnStores {
        let entries = [("k".to_string(), Value { value: "v".repeat(value_bytes), secure: false })].into();
        let layer = Layer { source: Source::Store { precedence: 0, name: "db".into() }, entries: Arc::new(entries) };
        OwnStores { summaries: Vec::new(), layers: vec![layer], shadowed: Vec::new(), unclaimed: Vec::new() }
    }

    fn read(includes: usize) -> LastRead {
        let location = Location { tenant: "t".into(), environment: None, config_type: "c".into() };
        let includes = (0..includes).map(|i| ("ssm".to_string(), format!("/shared/{i}"), 1)).collect();
        LastRead { generation: Some(1), location, stores: vec![("db".into(), 1)], includes }
    }

    #[test]
    fn values_are_kept_only_where_a_shared_change_can_reuse_them_and_only_small() {
        let reads = LastReads::default();
        let object = ObjectRef::new("a").within("ns");
        reads.record(&object, read(1), own(100));
        assert!(reads.take(&object, Some(1)).is_some(), "includes a shared path: kept");
        reads.record(&object, read(0), own(100));
        assert!(reads.take(&object, Some(1)).is_none(), "no include: never reused, not kept");
        assert_eq!(reads.snapshot().len(), 0, "taken");
        reads.record(&object, read(1), own(REUSE_MAX_BYTES));
        assert!(reads.take(&object, Some(1)).is_none(), "too large to keep a second copy of");
        reads.record(&object, read(1), own(10));
        reads.record(&object, read(0), own(10));
        assert!(reads.own.lock().unwrap().is_empty(), "a record without reuse drops the earlier values");
        assert_eq!(reads.snapshot().len(), 1, "the digests stay for the resync");
    }
}
