//! Tells the queue consumer when a message has been handled: every object it
//! triggered has completed a successful reconcile that *started after* the
//! message arrived (so that reconcile re-read the store after the change).
//!
//! The reconciler reports starts, projections and successes; the consumer waits.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::watch;

use crate::{api::Guarded, metrics::Metrics};

/// A message waiting for one object.
#[derive(Clone, Copy)]
struct Pending {
    /// When the consumer received it: a success must start after this.
    received: Instant,
    /// When it entered the queue (a redelivered copy has the same).
    sent: Instant,
    /// When the oldest message it superseded entered the queue: the origin
    /// of the lag metric.
    first_sent: Instant,
}

pub struct Tracker {
    /// Only objects with messages waiting: a success that covers them all
    /// removes the entry, so the map stays as small as the work in flight.
    pending: Mutex<HashMap<ObjectRef<Guarded>, Vec<Pending>>>,
    /// Bumped after every success, to wake waiters.
    progress: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl Tracker {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Tracker { pending: Mutex::default(), progress: watch::Sender::new(0), metrics }
    }

    /// A message received at `received` (sent to the queue at `sent`) triggers `objects`.
    ///
    /// Coalesced: an object holds at most one message. A newer message
    /// supersedes an older one for the same object (the success it waits for,
    /// a reconcile started after the newer arrival, re-reads everything the
    /// older one asked for), so the older is handled as far as this object
    /// goes. One object that never succeeds, edited again and again, then holds
    /// one message, not one per edit (which once filled the consumer's
    /// in-flight cap and stopped event delivery for every tenant). A
    /// redelivered copy of a message still held (same `sent`) supersedes
    /// nothing: deleting the first copy by its old receipt handle could delete
    /// the message while its change is not handled.
    pub fn expect(&self, objects: &[ObjectRef<Guarded>], received: Instant, sent: Instant) {
        let mut map = self.pending.lock().unwrap();
        for obj in objects {
            let waiting = map.entry(obj.clone()).or_default();
            let first_sent = waiting.iter().map(|p| p.first_sent).chain([sent]).min().unwrap_or(sent);
            waiting.retain(|p| p.sent == sent);
            waiting.push(Pending { received, sent, first_sent });
        }
        drop(map);
        // Waiters of superseded messages look again.
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The reconcile of `obj` that started at `started` wrote its projection:
    /// the oldest message it covers waited this long.
    pub fn projected(&self, obj: &ObjectRef<Guarded>, started: Instant) {
        let map = self.pending.lock().unwrap();
        let covered = map.get(obj).into_iter().flatten().filter(|p| p.received <= started);
        if let Some(oldest) = covered.map(|p| p.first_sent).min() {
            self.metrics.event_lag.observe(oldest.elapsed().as_secs_f64());
        }
    }

    /// The reconcile of `obj` that started at `started` succeeded: every
    /// message received before that start is handled for this object.
    pub fn succeeded(&self, obj: &ObjectRef<Guarded>, started: Instant) {
        {
            let mut map = self.pending.lock().unwrap();
            if let Some(waiting) = map.get_mut(obj) {
                waiting.retain(|p| p.received > started);
                if waiting.is_empty() {
                    map.remove(obj);
                    crate::spare::release_spare(&mut map);
                }
            }
        }
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn handled(&self, obj: &ObjectRef<Guarded>, received: Instant) -> bool {
        !self.pending.lock().unwrap().get(obj).is_some_and(|waiting| waiting.iter().any(|p| p.received == received))
    }

    /// Waits until every object in `objects` was handled for the message
    /// received at `received`, or `exists` says it no longer exists. False when
    /// `deadline` passes first.
    pub async fn wait(
        &self,
        objects: &[ObjectRef<Guarded>],
        received: Instant,
        deadline: Instant,
        exists: impl Fn(&ObjectRef<Guarded>) -> bool,
    ) -> bool {
        let mut progress = self.progress.subscribe();
        let mut remaining: Vec<&ObjectRef<Guarded>> = objects.iter().collect();
        loop {
            remaining.retain(|obj| !self.handled(obj, received) && exists(obj));
            if remaining.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Deletions do not report progress: look again at least every second.
            let wake = deadline.min(now + Duration::from_secs(1));
            let _ = tokio::time::timeout_at(wake.into(), progress.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> ObjectRef<Guarded> {
        ObjectRef::new(name).within("ns")
    }

    #[tokio::test]
    async fn handled_only_by_a_success_that_started_after_arrival() {
        let metrics = Arc::new(Metrics::default());
        let tracker = Arc::new(Tracker::new(metrics.clone()));
        let (a, b) = (obj("a"), obj("b"));
        let before = Instant::now();
        tracker.succeeded(&a, before); // an older reconcile does not count
        let arrival = Instant::now();
        tracker.expect(&[a.clone(), b.clone()], arrival, arrival);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!tracker.wait(&[a.clone(), b.clone()], arrival, soon, |_| true).await);

        let waiter = {
            let (tracker, a, b) = (tracker.clone(), a.clone(), b.clone());
            tokio::spawn(async move {
                tracker.wait(&[a, b], arrival, Instant::now() + Duration::from_secs(10), |_| true).await
            })
        };
        let started = Instant::now();
        tracker.projected(&a, started);
        tracker.succeeded(&a, started);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "b has not been reconciled yet");
        tracker.succeeded(&b, Instant::now());
        assert!(waiter.await.unwrap());
        assert_eq!(metrics.encode().matches("tenant_config_event_to_projection_seconds_count 1").count(), 1);
    }

    /// 200 edits of an object that never succeeds hold one message, the
    /// newest; each older one is released as the next arrives.
    #[tokio::test]
    async fn an_object_holds_at_most_one_message() {
        let tracker = Tracker::new(Arc::new(Metrics::default()));
        let (stuck, other) = (obj("stuck"), obj("other"));
        let first = Instant::now();
        tracker.expect(&[stuck.clone(), other.clone()], first, first);
        let mut last = first;
        for _ in 0..200 {
            last = Instant::now();
            tracker.expect(std::slice::from_ref(&stuck), last, last);
        }
        let soon = || Instant::now() + Duration::from_millis(20);
        assert!(tracker.wait(std::slice::from_ref(&stuck), first, soon(), |_| true).await, "superseded");
        assert!(!tracker.wait(std::slice::from_ref(&other), first, soon(), |_| true).await, "other still waits");
        assert!(!tracker.wait(std::slice::from_ref(&stuck), last, soon(), |_| true).await, "the newest is held");
        assert_eq!(tracker.pending.lock().unwrap()[&stuck].len(), 1);
        // A redelivered copy of the held message keeps both copies held.
        let again = Instant::now();
        tracker.expect(std::slice::from_ref(&stuck), again, last);
        assert!(
            !tracker.wait(std::slice::from_ref(&stuck), last, soon(), |_| true).await,
            "not superseded by its copy"
        );
    }

    #[tokio::test]
    async fn a_deleted_object_does_not_hold_a_message() {
        let tracker = Tracker::new(Arc::new(Metrics::default()));
        let arrival = Instant::now();
        tracker.expect(&[obj("gone")], arrival, arrival);
        assert!(tracker.wait(&[obj("gone")], arrival, Instant::now() + Duration::from_secs(5), |_| false).await);
    }
}
