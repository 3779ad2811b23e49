//! The controller's own ConfigMap writes, recognised when the watch brings them
//! back.
//!
//! The owned-ConfigMap watch exists to revert other writers' edits and to
//! recreate deleted ConfigMaps. Every write the controller makes comes back
//! through it too, and re-reconciling then re-reads every store of the object
//! for nothing (measured: one extra GetItem and GetParametersByPath per object
//! during a cold start). A write is recognised by the resourceVersion the API
//! server returned for it: any later change, by anyone, has another one.

use std::{collections::HashMap, sync::Mutex};

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

/// resourceVersions of the controller's own writes whose watch event has not
/// come back yet, by object.
#[derive(Default)]
pub struct OwnWrites {
    pending: Mutex<HashMap<(String, String), String>>,
}

impl OwnWrites {
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
                    return true;
                }
                false
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

    /// Writes still waiting for their echo (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

    #[test]
    fn forget_drops_a_pending_write() {
        let own = OwnWrites::default();
        own.wrote(&cm("a", "x", "10"));
        own.forget(&ObjectRef::<ConfigMap>::new("x").within("a"));
        assert!(own.is_empty());
        assert!(!own.is_echo(&watcher::Event::Apply(cm("a", "x", "10"))));
    }
}
