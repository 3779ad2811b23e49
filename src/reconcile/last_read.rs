//! What each object's last successful reconcile read from its stores, as
//! digests: the bulk resync compares them with a fresh bulk read and
//! reconciles only the objects whose stores changed since.

use std::{collections::HashMap, sync::Mutex};

use kube::runtime::reflector::ObjectRef;

use crate::{api::Guarded, store::Location};

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

/// The records, by object. An object without one (never reconciled here, or
/// its last reconcile did not succeed) is reconciled by every resync.
#[derive(Default)]
pub struct LastReads {
    records: Mutex<HashMap<ObjectRef<Guarded>, LastRead>>,
}

impl LastReads {
    pub fn record(&self, object: &ObjectRef<Guarded>, read: LastRead) {
        self.records.lock().unwrap().insert(object.clone(), read);
    }

    pub fn forget(&self, object: &ObjectRef<Guarded>) {
        self.records.lock().unwrap().remove(object);
    }

    pub fn snapshot(&self) -> HashMap<ObjectRef<Guarded>, LastRead> {
        self.records.lock().unwrap().clone()
    }
}
