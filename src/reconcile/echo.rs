//! The controller's own ConfigMap writes, recognised when the watch brings them
//! back.
//!
//! The owned-ConfigMap watch exists to revert other writers' edits and to
//! recreate deleted ConfigMaps. Every write the controller makes comes back
//! through it too, and re-reconciling then re-reads every store of the object
//! for nothing (measured: one extra GetItem and GetParametersByPath per object
//! during a cold start). A write is recognised by the resourceVersion the API
//! server returned for it: any later change, by anyone, has another one. The
//! watch can bring the write back before its response has been handled; while
//! a write is in flight, an event whose newest managed-fields entry is this
//! controller's apply (and nobody else's at that second) is taken as its echo.

use std::{collections::HashMap, sync::Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

use crate::api::names::FIELD_MANAGER;

/// resourceVersions of the controller's own writes whose watch event has not
/// come back yet, by object.
#[derive(Default)]
pub struct OwnWrites {
    pending: Mutex<HashMap<(String, String), String>>,
    in_flight: Mutex<HashMap<(String, String), u32>>,
}

/// A write under way; dropped when it ended, however it ended.
pub struct Writing<'a> {
    own: &'a OwnWrites,
    key: (String, String),
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.own.in_flight.lock().unwrap();
        if let Some(n) = in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

impl OwnWrites {
    /// A write of `namespace/name` starts now.
    pub fn writing(&self, namespace: &str, name: &str) -> Writing<'_> {
        let key = (namespace.to_string(), name.to_string());
        *self.in_flight.lock().unwrap().entry(key.clone()).or_insert(0) += 1;
        Writing { own: self, key }
    }

    /// Remembers a write the controller made (the object the API server returned).
    pub fn wrote(&self, written: &impl ResourceExt) {
        if let (Some(ns), Some(rv)) = (written.namespace(), written.resource_version()) {
            self.pending.lock().unwrap().insert((ns, written.name_any()), rv);
        }
    }

    /// Forgets an object (its owner is gone).
    pub fn forget<K: kube::Resource>(&self, object: &ObjectRef<K>) {
        if let Some(ns) = &object.namespace {
            self.pending.lock().unwrap().remove(&(ns.clone(), object.name.clone()));
        }
    }

    /// Whether a watch event only reports the controller's own last write: an
    /// update carrying exactly the resourceVersion that write returned. Deletions
    /// and everything else pass.
    pub fn is_echo<K: ResourceExt>(&self, event: &watcher::Event<K>) -> bool {
        let mut pending = self.pending.lock().unwrap();
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                let Some(ns) = object.namespace() else { return false };
                let key = (ns, object.name_any());
                // One echo per write: a repeated delivery of the same version
                // (a relist) is not a new change either, but costs nothing to pass.
                if object.resource_version().is_some_and(|rv| pending.get(&key) == Some(&rv)) {
                    pending.remove(&key);
                    crate::spare::release_spare(&mut pending);
                    return true;
                }
                self.in_flight.lock().unwrap().contains_key(&key) && applied_last_by_us(object.managed_fields())
            }
            watcher::Event::Delete(object) => {
                if let Some(ns) = object.namespace() {
                    pending.remove(&(ns, object.name_any()));
                }
                false
            }
            watcher::Event::Init | watcher::Event::InitDone => false,
        }
    }

    /// Writes still waiting for their echo, or in flight (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap().len() + self.in_flight.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether the newest managed-fields entry is this controller's (its apply, or
/// the create of a shell that the apply fills), and no other manager's entry is
/// as new (timestamps have one-second resolution).
fn applied_last_by_us(fields: &[ManagedFieldsEntry]) -> bool {
    let ours = |f: &&ManagedFieldsEntry| f.manager.as_deref() == Some(FIELD_MANAGER);
    let Some(our_time) = fields.iter().filter(ours).filter_map(|f| f.time.as_ref()).max() else { return false };
    fields.iter().filter(|f| !ours(f)).filter_map(|f| f.time.as_ref()).all(|t| t < our_time)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn cm(ns: &str, name: &str, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn own_write_is_an_echo_once() {
        let own = OwnWrites::default();
        own.wrote(&cm("a", "x", "10"));
        assert!(own.is_echo(&watcher::Event::Apply(cm("a", "x", "10"))));
        assert!(own.is_empty(), "consumed");
        assert!(!own.is_echo(&watcher::Event::Apply(cm("a", "x", "10"))), "only once");
    }

    #[test]
    fn other_writers_and_other_objects_pass() {
        let own = OwnWrites::default();
        own.wrote(&cm("a", "x", "10"));
        // A later edit by someone else: another resourceVersion.
        assert!(!own.is_echo(&watcher::Event::Apply(cm("a", "x", "11"))));
        // Same name in another namespace.
        assert!(!own.is_echo(&watcher::Event::Apply(cm("b", "x", "10"))));
        // An object the controller never wrote.
        assert!(!own.is_echo(&watcher::Event::Apply(cm("a", "y", "10"))));
    }

    #[test]
    fn a_newer_own_write_replaces_the_older_one() {
        let own = OwnWrites::default();
        own.wrote(&cm("a", "x", "10"));
        own.wrote(&cm("a", "x", "12"));
        // The first write's event is stale by now: it triggers (harmless), the second's does not.
        assert!(!own.is_echo(&watcher::Event::Apply(cm("a", "x", "10"))));
        assert!(own.is_echo(&watcher::Event::Apply(cm("a", "x", "12"))));
    }

    #[test]
    fn deletion_always_triggers_and_forgets() {
        let own = OwnWrites::default();
        own.wrote(&cm("a", "x", "10"));
        assert!(!own.is_echo(&watcher::Event::Delete(cm("a", "x", "10"))));
        assert!(own.is_empty());
    }

    fn managed(cm: &mut ConfigMap, entries: &[(&str, &str, &str)]) {
        cm.metadata.managed_fields = Some(
            entries
                .iter()
                .map(|(manager, operation, time)| {
                    serde_json::from_value(
                        serde_json::json!({ "manager": manager, "operation": operation, "time": time }),
                    )
                    .unwrap()
                })
                .collect(),
        );
    }

    #[test]
    fn an_echo_that_beats_the_response_is_still_an_echo() {
        let own = OwnWrites::default();
        let mut echo = cm("a", "x", "10");
        managed(
            &mut echo,
            &[("kubectl", "Update", "2026-12-01T10:00:00Z"), (FIELD_MANAGER, "Apply", "2026-12-01T10:00:05Z")],
        );
        assert!(!own.is_echo(&watcher::Event::Apply(echo.clone())), "no write in flight: a change to look at");
        let writing = own.writing("a", "x");
        assert!(own.is_echo(&watcher::Event::Apply(echo.clone())), "in flight, and ours is the newest entry");
        let mut foreign = cm("a", "x", "11");
        managed(
            &mut foreign,
            &[(FIELD_MANAGER, "Apply", "2026-12-01T10:00:05Z"), ("kubectl", "Update", "2026-12-01T10:00:05Z")],
        );
        assert!(!own.is_echo(&watcher::Event::Apply(foreign)), "someone else wrote in the same second");
        drop(writing);
        assert!(!own.is_echo(&watcher::Event::Apply(echo)), "not in flight any more");
        assert!(own.is_empty());
    }

    #[test]
    fn forget_drops_a_pending_write() {
        let own = OwnWrites::default();
        own.wrote(&cm("a", "x", "10"));
        own.forget(&ObjectRef::<ConfigMap>::new("x").within("a"));
        assert!(own.is_empty());
        assert!(!own.is_echo(&watcher::Event::Apply(cm("a", "x", "10"))));
    }
}
