//! What the controller remembers per object between reconciles: requests
//! not yet started (the queue depth), failures (for backoff), the last reads
//! (for reuse and the resync) and its own ConfigMap writes (echoes).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Instant,
};

use kube::runtime::reflector::ObjectRef;

use super::{echo::OwnWrites, last_read::LastReads};
use crate::{api::Guarded, store::quota::Quotas, work_permits::WorkPermits};

/// The per-object memory of the controller.
pub struct Ledgers {
    pub retries: Retries,
    /// Requested reconciles that have not started (the queue depth).
    pub requests: Arc<Requests>,
    /// What each object's last successful reconcile read (for the resync and reuse).
    pub last_reads: Arc<LastReads>,
    /// ConfigMap writes of this controller whose watch event is still to come.
    pub own_writes: Arc<OwnWrites>,
    /// What each admitted object counts against its tenant's store quotas.
    pub quotas: Quotas,
    /// Reconciles under way per tenant (`--tenant-concurrency`).
    pub tenant_slots: TenantSlots,
    /// Reconciles working at once (`--concurrency`); lent while waiting for rate tokens.
    pub work_permits: WorkPermits,
}

impl Ledgers {
    /// Empty ledgers; `queue_depth` follows the requests not yet started,
    /// `queue_wait` how long each waited.
    pub fn new(
        queue_depth: prometheus_client::metrics::gauge::Gauge,
        queue_wait: prometheus_client::metrics::histogram::Histogram,
        concurrency: u16,
    ) -> Self {
        Ledgers {
            retries: Retries::default(),
            requests: Arc::new(Requests::new(queue_depth, queue_wait)),
            last_reads: Arc::new(LastReads::default()),
            own_writes: Arc::new(OwnWrites::default()),
            quotas: Quotas::default(),
            tenant_slots: TenantSlots::default(),
            work_permits: WorkPermits::new(concurrency),
        }
    }
}

/// Reconciles under way per tenant, and the objects waiting for one of the
/// tenant's slots; only tenants with either are kept. A slot given back wakes
/// the tenant's longest-waiting object (no polling: a cold start of a tenant
/// with thousands of objects would otherwise requeue them all again and again).
#[derive(Default)]
pub struct TenantSlots(Arc<Mutex<SlotsInner>>);

#[derive(Default)]
struct SlotsInner {
    held: HashMap<String, u16>,
    /// Waiting objects, longest-waiting first, with when each started to wait.
    waiting: HashMap<String, VecDeque<(ObjectRef<Guarded>, Instant)>>,
    /// When each tenant with waiting objects was last told so by an Event.
    told: HashMap<String, Instant>,
    wake: Option<futures::channel::mpsc::UnboundedSender<ObjectRef<Guarded>>>,
}

/// One of a tenant's slots, given back when dropped.
pub struct TenantSlot {
    slots: Arc<Mutex<SlotsInner>>,
    tenant: String,
}

/// An object that must wait for one of its tenant's slots.
#[derive(Debug, PartialEq, Eq)]
pub struct Deferred {
    /// The tenant's objects waiting, this one included.
    pub waiting: usize,
    /// Whether to say so in an Event: at most once a minute per tenant, so a
    /// tenant's cold start of thousands of objects is not thousands of Events.
    pub tell: bool,
}

/// How much one tenant waits for its fair share, for the operators' view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantWait {
    pub tenant: String,
    pub under_way: u16,
    pub waiting: usize,
    /// How long its longest-waiting object has waited.
    pub longest: std::time::Duration,
}

/// How often a tenant's objects waiting their turn are told so by an Event.
const TELL_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl TenantSlots {
    /// Where a woken object is sent (the controller reconciles what arrives).
    pub fn wake_with(&self, wake: futures::channel::mpsc::UnboundedSender<ObjectRef<Guarded>>) {
        self.0.lock().unwrap().wake = Some(wake);
    }

    /// A slot for `tenant` unless it already holds `limit` (0: no limit);
    /// otherwise `object` waits for the next one the tenant gives back.
    pub fn try_acquire(&self, tenant: &str, limit: u16, object: &ObjectRef<Guarded>) -> Result<TenantSlot, Deferred> {
        let now = Instant::now();
        let mut inner = self.0.lock().unwrap();
        let held = inner.held.get(tenant).copied().unwrap_or(0);
        if limit > 0 && held >= limit {
            let waiting = inner.waiting.entry(tenant.to_string()).or_default();
            if !waiting.iter().any(|(o, _)| o == object) {
                waiting.push_back((object.clone(), now));
            }
            let waiting = waiting.len();
            let tell = inner.told.get(tenant).is_none_or(|at| now.duration_since(*at) >= TELL_EVERY);
            if tell {
                inner.told.insert(tenant.to_string(), now);
            }
            return Err(Deferred { waiting, tell });
        }
        *inner.held.entry(tenant.to_string()).or_insert(0) += 1;
        Ok(TenantSlot { slots: self.0.clone(), tenant: tenant.to_string() })
    }

    /// Tenants with a reconcile under way or waiting (for tests and the memory bound).
    pub fn tenants(&self) -> usize {
        let inner = self.0.lock().unwrap();
        inner.held.keys().chain(inner.waiting.keys()).collect::<std::collections::HashSet<_>>().len()
    }

    /// The `n` tenants whose objects have waited longest for a slot.
    pub fn busiest(&self, n: usize) -> Vec<TenantWait> {
        let now = Instant::now();
        let inner = self.0.lock().unwrap();
        let mut waits: Vec<TenantWait> = inner
            .waiting
            .iter()
            .map(|(tenant, queue)| TenantWait {
                tenant: tenant.clone(),
                under_way: inner.held.get(tenant).copied().unwrap_or(0),
                waiting: queue.len(),
                longest: queue.front().map(|(_, since)| now.duration_since(*since)).unwrap_or_default(),
            })
            .collect();
        waits.sort_by(|a, b| b.longest.cmp(&a.longest).then_with(|| a.tenant.cmp(&b.tenant)));
        waits.truncate(n);
        waits
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock().unwrap();
        if let Some(held) = inner.held.get_mut(&self.tenant) {
            *held -= 1;
            if *held == 0 {
                inner.held.remove(&self.tenant);
            }
        }
        let next = inner.waiting.get_mut(&self.tenant).and_then(VecDeque::pop_front);
        if inner.waiting.get(&self.tenant).is_some_and(VecDeque::is_empty) {
            inner.waiting.remove(&self.tenant);
            inner.told.remove(&self.tenant);
        }
        if let (Some((next, _)), Some(wake)) = (next, &inner.wake) {
            let _ = wake.unbounded_send(next);
        }
    }
}

/// Objects whose reconcile was requested (a watch change, an owned ConfigMap,
/// a namespace or store change, an event, the resync, a re-requested retry)
/// and has not started: the reconcile queue's depth. A retry waiting for its
/// backoff is not in it (see `objects_backing_off`).
pub struct Requests {
    requested: Mutex<HashMap<ObjectRef<Guarded>, Request>>,
    depth: prometheus_client::metrics::gauge::Gauge,
    wait: prometheus_client::metrics::histogram::Histogram,
}

/// A pending request: since when, and whether only shared-path changes asked.
struct Request {
    since: Instant,
    shared_only: bool,
}

impl Requests {
    pub fn new(
        depth: prometheus_client::metrics::gauge::Gauge,
        wait: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        Requests { requested: Mutex::default(), depth, wait }
    }

    /// A reconcile of `object` was requested now (repeats merge, as in the queue).
    pub fn requested(&self, object: &ObjectRef<Guarded>) {
        self.request(object, false)
    }

    /// A reconcile was requested by a change under a shared path only: unless
    /// anything else asks too before it starts, it may reuse the object's last
    /// read of its own stores.
    pub fn requested_by_shared_change(&self, object: &ObjectRef<Guarded>) {
        self.request(object, true)
    }

    fn request(&self, object: &ObjectRef<Guarded>, shared_only: bool) {
        let mut requested = self.requested.lock().unwrap();
        let request = requested.entry(object.clone()).or_insert(Request { since: Instant::now(), shared_only });
        request.shared_only &= shared_only;
        self.depth.set(requested.len() as i64);
    }

    /// A reconcile of `object` started at `at`: it serves every request made
    /// before. Returns whether only shared-path changes asked for it (a
    /// reconcile nobody asked for through here, e.g. a retry, did not).
    pub fn started(&self, object: &ObjectRef<Guarded>, at: Instant) -> bool {
        let mut requested = self.requested.lock().unwrap();
        let served = requested.get(object).is_some_and(|r| r.since <= at);
        let served = if served { requested.remove(object) } else { None };
        crate::spare::release_spare(&mut requested);
        if let Some(request) = &served {
            self.wait.observe(at.saturating_duration_since(request.since).as_secs_f64());
        }
        let shared_only = served.is_some_and(|r| r.shared_only);
        self.depth.set(requested.len() as i64);
        shared_only
    }

    /// The object is gone: nothing will start for it.
    pub fn forget(&self, object: &ObjectRef<Guarded>) {
        let mut requested = self.requested.lock().unwrap();
        requested.remove(object);
        crate::spare::release_spare(&mut requested);
        self.depth.set(requested.len() as i64);
    }

    pub fn depth(&self) -> usize {
        self.requested.lock().unwrap().len()
    }
}

/// Per-object failure and attempt counts, for backoff and for re-requesting
/// retries that did not start.
#[derive(Default)]
pub struct Retries {
    failures: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
    /// Reconciles started per object since its last success.
    attempts: Mutex<HashMap<ObjectRef<Guarded>, u64>>,
}

impl Retries {
    pub fn started(&self, key: &ObjectRef<Guarded>) {
        *self.attempts.lock().unwrap().entry(key.clone()).or_insert(0) += 1;
    }

    /// A success: the backoff starts over.
    pub fn succeeded(&self, key: &ObjectRef<Guarded>) {
        self.failures.lock().unwrap().remove(key);
        self.attempts.lock().unwrap().remove(key);
    }

    /// Counts a failure; returns how many in a row.
    pub fn failed(&self, key: &ObjectRef<Guarded>) -> u32 {
        let mut map = self.failures.lock().unwrap();
        let n = map.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Whether the object's last reconcile failed.
    pub fn failing(&self, key: &ObjectRef<Guarded>) -> bool {
        self.failures.lock().unwrap().contains_key(key)
    }

    /// Objects whose last reconcile failed.
    pub fn backing_off(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    pub fn attempts(&self, key: &ObjectRef<Guarded>) -> Option<u64> {
        self.attempts.lock().unwrap().get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;

    #[test]
    fn a_tenant_holds_at_most_its_share_of_slots_and_a_slot_given_back_wakes_the_next() {
        let slots = TenantSlots::default();
        let (wake, mut woken) = futures::channel::mpsc::unbounded();
        slots.wake_with(wake);
        let object = |name: &str| ObjectRef::new(name).within("ns");
        let a1 = slots.try_acquire("a", 2, &object("a1")).unwrap();
        let _a2 = slots.try_acquire("a", 2, &object("a2")).unwrap();
        let told = Deferred { waiting: 1, tell: true };
        assert_eq!(slots.try_acquire("a", 2, &object("a3")).err(), Some(told), "a's share is taken; said once");
        let quiet = Deferred { waiting: 1, tell: false };
        assert_eq!(slots.try_acquire("a", 2, &object("a3")).err(), Some(quiet), "asked twice, waits once");
        assert_eq!(slots.try_acquire("a", 2, &object("a4")).err(), Some(Deferred { waiting: 2, tell: false }));
        let busiest = slots.busiest(10);
        assert_eq!((busiest.len(), busiest[0].under_way, busiest[0].waiting), (1, 2, 2), "{busiest:?}");
        let b = slots.try_acquire("b", 2, &object("b1")).expect("b has its own");
        drop(b);
        assert!(woken.try_recv().is_err(), "b's slot wakes none of a's objects");
        drop(a1);
        assert_eq!(woken.try_recv().unwrap(), object("a3"), "the longest-waiting first");
        assert!(woken.try_recv().is_err(), "one slot, one object");
        assert!(slots.try_acquire("a", 2, &object("a3")).is_ok(), "its turn");
        assert_eq!(slots.tenants(), 1);
        assert!((0..100).all(|_| slots.try_acquire("c", 0, &object("c")).is_ok()), "0: no limit");
    }

    #[test]
    fn the_busiest_view_is_bounded_and_ordered_by_the_longest_wait() {
        let slots = TenantSlots::default();
        let object = |name: &str| ObjectRef::new(name).within("ns");
        let mut held = Vec::new();
        for t in 0..30 {
            let tenant = format!("t{t:02}");
            held.push(slots.try_acquire(&tenant, 1, &object(&tenant)).unwrap());
            assert!(slots.try_acquire(&tenant, 1, &object(&format!("{tenant}-w"))).is_err());
        }
        let busiest = slots.busiest(10);
        assert_eq!(busiest.len(), 10);
        assert_eq!(busiest[0].tenant, "t00", "waiting longest");
        assert!(busiest.windows(2).all(|w| w[0].longest >= w[1].longest));
    }
    use std::time::Duration;

    #[test]
    fn requests_merge_and_a_start_serves_those_before_it() {
        let requests = Requests::new(Default::default(), Histogram::new([1.0]));
        let (a, b) = (ObjectRef::new("a").within("ns"), ObjectRef::new("b").within("ns"));
        requests.requested(&a);
        requests.requested(&a);
        requests.requested(&b);
        assert_eq!(requests.depth(), 2, "a repeated request is one entry, as in the queue");
        let before = Instant::now() - Duration::from_secs(60);
        requests.started(&a, before);
        assert_eq!(requests.depth(), 2, "a reconcile that started before the request does not serve it");
        requests.started(&a, Instant::now());
        assert_eq!(requests.depth(), 1);
        requests.forget(&b);
        assert_eq!(requests.depth(), 0);
    }

    #[test]
    fn only_a_reconcile_that_nothing_but_shared_changes_asked_for_may_reuse_reads() {
        let requests = Requests::new(Default::default(), Histogram::new([1.0]));
        let a = ObjectRef::new("a").within("ns");
        requests.requested_by_shared_change(&a);
        requests.requested_by_shared_change(&a);
        assert!(requests.started(&a, Instant::now()), "shared changes only");
        requests.requested_by_shared_change(&a);
        requests.requested(&a);
        requests.requested_by_shared_change(&a);
        assert!(!requests.started(&a, Instant::now()), "another cause, before or after, wins");
        assert!(!requests.started(&a, Instant::now()), "nothing pending (a retry, a requeue): a full reconcile");
        requests.requested_by_shared_change(&a);
        assert!(
            !requests.started(&a, Instant::now() - Duration::from_secs(60)),
            "a request after the start is not served"
        );
        assert_eq!(requests.depth(), 1);
    }
}
