//! What this process knows about the ConfigMaps and Secrets it projects,
//! told by the reconciler after each successful projection, and the content
//! changes it passes on to refresh and rollout.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::mpsc;

use super::{decide::Seen, refs::Reference};

/// A content change of projected objects in one namespace.
#[derive(Debug)]
pub struct Change {
    pub namespace: String,
    pub references: BTreeSet<Reference>,
    /// The TenantConfig that projected them (Events about refreshes and
    /// rollouts go there).
    pub by: ObjectReference,
}

/// Digest and last write of every projected object since this process
/// started. Holds nothing (and costs nothing) unless refresh or rollout
/// subscribed.
#[derive(Default)]
pub struct Projections {
    seen: Mutex<HashMap<(String, Reference), Seen>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Arc<Change>>>>,
}

impl Projections {
    /// Changes from now on.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Arc<Change>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.subscribers.lock().unwrap().push(sender);
        receiver
    }

    /// What a successful reconcile projected into `namespace`. Subscribers hear
    /// of the objects whose digest differs from the one known before — also of
    /// those not known before (the first reconcile after a start), so that a
    /// change made just before a restart is still followed up.
    pub fn record(&self, namespace: &str, by: ObjectReference, parts: Vec<(Reference, Seen)>) {
        let mut subscribers = self.subscribers.lock().unwrap();
        if subscribers.is_empty() {
            return;
        }
        let mut references = BTreeSet::new();
        {
            let mut seen = self.seen.lock().unwrap();
            for (reference, now) in parts {
                let key = (namespace.to_string(), reference.clone());
                let same = seen.get(&key).is_some_and(|before| before.digest == now.digest);
                if !same {
                    references.insert(reference);
                }
                seen.insert(key, now);
            }
        }
        if references.is_empty() {
            return;
        }
        let change = Arc::new(Change { namespace: namespace.to_string(), references, by });
        subscribers.retain(|s| s.send(change.clone()).is_ok());
    }

    /// The object is gone (its TenantConfig was deleted).
    pub fn forget(&self, namespace: &str, references: impl IntoIterator<Item = Reference>) {
        let mut seen = self.seen.lock().unwrap();
        for reference in references {
            seen.remove(&(namespace.to_string(), reference));
        }
    }

    pub(super) fn with_seen<T>(&self, f: impl FnOnce(&HashMap<(String, Reference), Seen>) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::refs::Kind;

    fn seen(digest: &str) -> Seen {
        Seen { digest: digest.into(), written_at: None }
    }

    #[test]
    fn subscribers_hear_of_new_and_changed_digests_only() {
        let projections = Projections::default();
        let mut changes = projections.subscribe();
        let cm = (Kind::ConfigMap, "payments".to_string());
        let secret = (Kind::Secret, "payments".to_string());
        let by = ObjectReference::default();
        projections.record("acme", by.clone(), vec![(cm.clone(), seen("1")), (secret.clone(), seen("s"))]);
        let first = changes.try_recv().unwrap();
        assert_eq!(first.references, [cm.clone(), secret.clone()].into(), "first sight counts");
        projections.record("acme", by.clone(), vec![(cm.clone(), seen("1")), (secret.clone(), seen("s"))]);
        assert!(changes.try_recv().is_err(), "an unchanged projection is no change");
        projections.record("acme", by.clone(), vec![(cm.clone(), seen("2")), (secret.clone(), seen("s"))]);
        assert_eq!(changes.try_recv().unwrap().references, [cm.clone()].into(), "only the ConfigMap changed");
        projections.record("other", by, vec![(cm.clone(), seen("2"))]);
        assert_eq!(changes.try_recv().unwrap().namespace, "other", "namespaces are apart");
    }

    #[test]
    fn nothing_is_held_without_subscribers() {
        let projections = Projections::default();
        projections.record("acme", ObjectReference::default(), vec![((Kind::ConfigMap, "a".into()), seen("1"))]);
        assert!(projections.with_seen(|seen| seen.is_empty()));
    }
}
