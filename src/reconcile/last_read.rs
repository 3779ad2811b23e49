//! What each object's last successful reconcile read from its stores, as
//! digests: the bulk resync compares them with a fresh bulk read and
//! reconciles only the objects whose stores changed since. And the layers
//! themselves, which a reconcile asked for by a shared-path change alone
//! reuses instead of reading the object's own stores again.

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

impl LastReads {
    pub fn record(&self, object: &ObjectRef<Guarded>, read: LastRead, own: OwnStores) {
        self.records.lock().unwrap().insert(object.clone(), read);
        self.own.lock().unwrap().insert(object.clone(), Arc::new(own));
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
