//! Kubernetes Events about the controller's objects (`events.k8s.io/v1`).
//!
//! kube-runtime's `Recorder` keeps every Event it published in the last six
//! minutes — whole objects, about 3.5 KiB each — and scans all of them on
//! every publish: in a cold start of 3,000 TenantConfigs they were 10.5 MB of
//! a 30 MB heap (heaptrack, BENCHMARKS.md). It also counts a repeat by type, reason and
//! object only, so a second `StoreWritten` with a different note was shown
//! with the first one's note. This recorder remembers a repeat by a 64-bit key
//! over everything the Event says (note included) and keeps per key only the
//! Event's name and count; entries expire after the same six minutes, swept
//! at most once a minute, and at most `MAX_REMEMBERED` are kept (a repeat past
//! that becomes a new Event instead of a count).

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::EventType,
};
use serde_json::json;

/// How long a published Event can still be counted up instead of repeated
/// (client-go's and kube-runtime's series window).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// Expired entries are dropped at most this often (a sweep visits them all).
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Bound on remembered Events: about 100 bytes each.
const MAX_REMEMBERED: usize = 16_384;

pub struct Recorder {
    client: Client,
    controller: String,
    recent: Mutex<Recent>,
}

/// What one Event says, apart from when.
pub struct Said<'a> {
    pub regarding: &'a ObjectReference,
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

impl Said<'_> {
    fn key(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        let r = self.regarding;
        (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid).hash(&mut hasher);
        (matches!(self.type_, EventType::Warning), self.reason, self.action, self.note).hash(&mut hasher);
        hasher.finish()
    }
}

impl Recorder {
    pub fn new(client: Client, controller: &str) -> Self {
        Recorder { client, controller: controller.to_string(), recent: Mutex::new(Recent::new(Instant::now())) }
    }

    /// Publishes an Event, or counts up the same Event published within the
    /// series window.
    pub async fn publish(&self, said: Said<'_>) -> Result<(), kube::Error> {
        let key = said.key();
        let namespace = said.regarding.namespace.as_deref().unwrap_or("default");
        let events = Api::<Event>::namespaced(self.client.clone(), namespace);
        let repeat = self.recent.lock().unwrap().repeat(key, Instant::now());
        if let Some((name, count)) = repeat {
            let series = json!({ "series": { "count": count, "lastObservedTime": MicroTime(Timestamp::now()) } });
            match events.patch(&name, &PatchParams::default(), &Patch::Merge(&series)).await {
                Ok(_) => {
                    self.recent.lock().unwrap().remember(key, name, count, Instant::now());
                    return Ok(());
                }
                // Removed by the API server's Event TTL or by hand: publish anew.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(&said);
        let name = event.metadata.name.clone().unwrap_or_default();
        events.create(&PostParams::default(), &event).await?;
        self.recent.lock().unwrap().remember(key, name, 1, Instant::now());
        Ok(())
    }

    fn event(&self, said: &Said<'_>) -> Event {
        let now = Timestamp::now();
        let name = said.regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: said.regarding.namespace.clone(),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            regarding: Some(said.regarding.clone()),
            type_: Some(match said.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            reason: Some(said.reason.into()),
            action: Some(said.action.into()),
            note: Some(said.note.into()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.controller.clone()),
            ..Default::default()
        }
    }
}

/// Recently published Events: key → (name, count, last published).
struct Recent {
    published: HashMap<u64, (String, i32, Instant)>,
    swept: Instant,
}

impl Recent {
    fn new(now: Instant) -> Self {
        Recent { published: HashMap::new(), swept: now }
    }

    /// The name and next count of an Event published within the window.
    fn repeat(&mut self, key: u64, now: Instant) -> Option<(String, i32)> {
        self.sweep(now);
        let (name, count, last) = self.published.get(&key)?;
        (now.duration_since(*last) < SERIES_WINDOW).then(|| (name.clone(), count + 1))
    }

    fn remember(&mut self, key: u64, name: String, count: i32, now: Instant) {
        if self.published.len() >= MAX_REMEMBERED && !self.published.contains_key(&key) {
            return;
        }
        self.published.insert(key, (name, count, now));
    }

    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.swept) < SWEEP_EVERY {
            return;
        }
        self.swept = now;
        self.published.retain(|_, (_, _, last)| now.duration_since(*last) < SERIES_WINDOW);
        self.published.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("tenantconfig.io/v1alpha1".into()),
            kind: Some("TenantConfig".into()),
            namespace: Some("team-a".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    fn said<'a>(regarding: &'a ObjectReference, note: &'a str) -> Said<'a> {
        Said { regarding, type_: EventType::Normal, reason: "StoreWritten", action: "Reconcile", note }
    }

    #[test]
    fn the_key_covers_what_the_event_says() {
        let (a, b) = (reference("a"), reference("b"));
        assert_eq!(said(&a, "wrote 2 keys").key(), said(&a, "wrote 2 keys").key());
        assert_ne!(said(&a, "wrote 2 keys").key(), said(&a, "wrote 3 keys").key(), "the note");
        assert_ne!(said(&a, "wrote 2 keys").key(), said(&b, "wrote 2 keys").key(), "the object");
        let warning = Said { type_: EventType::Warning, ..said(&a, "wrote 2 keys") };
        assert_ne!(said(&a, "wrote 2 keys").key(), warning.key(), "the type");
        let other_reason = Said { reason: "DriftCorrected", ..said(&a, "wrote 2 keys") };
        assert_ne!(said(&a, "wrote 2 keys").key(), other_reason.key(), "the reason");
    }

    #[test]
    fn a_repeat_within_the_window_counts_up_the_same_event() {
        let start = Instant::now();
        let mut recent = Recent::new(start);
        assert_eq!(recent.repeat(1, start), None);
        recent.remember(1, "a.1".into(), 1, start);
        let soon = start + Duration::from_secs(30);
        assert_eq!(recent.repeat(1, soon), Some(("a.1".into(), 2)));
        recent.remember(1, "a.1".into(), 2, soon);
        // The window runs from the last publish.
        let later = soon + SERIES_WINDOW - Duration::from_secs(1);
        assert_eq!(recent.repeat(1, later), Some(("a.1".into(), 3)));
        assert_eq!(recent.repeat(1, soon + SERIES_WINDOW), None);
        assert_eq!(recent.repeat(2, soon), None, "another key");
    }

    #[test]
    fn expired_events_are_forgotten_by_a_sweep() {
        let start = Instant::now();
        let mut recent = Recent::new(start);
        recent.remember(1, "a.1".into(), 1, start);
        recent.remember(2, "b.1".into(), 1, start + SERIES_WINDOW);
        // Before the first minute no sweep runs.
        recent.repeat(3, start + Duration::from_secs(1));
        assert_eq!(recent.published.len(), 2);
        recent.repeat(3, start + SERIES_WINDOW + SWEEP_EVERY);
        assert_eq!(recent.published.keys().collect::<Vec<_>>(), [&2]);
    }

    #[test]
    fn memory_is_bounded() {
        let now = Instant::now();
        let mut recent = Recent::new(now);
        for key in 0..MAX_REMEMBERED as u64 + 10 {
            recent.remember(key, format!("e.{key}"), 1, now);
        }
        assert_eq!(recent.published.len(), MAX_REMEMBERED);
        // A remembered Event still counts up.
        recent.remember(0, "e.0".into(), 2, now);
        assert_eq!(recent.repeat(0, now), Some(("e.0".into(), 3)));
    }
}
