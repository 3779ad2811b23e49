//! Prometheus metrics (prometheus-client), all under the `tenant_config_` prefix,
//! with low-cardinality labels only: never a tenant, namespace or object name.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeMetric,
        text::{encode_eof, encode_registry},
    },
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::store::{
    BackendContext,
    shared_cache::{self, CacheLabels},
    stats::CallStats,
};

mod allocator;
mod process;
pub use allocator::AllocatorCollector;
pub use process::ProcessCollector;

pub const PREFIX: &str = "tenant_config";

/// What happened to an event message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// received | ignored | malformed | acked | unhandled (left for redelivery) |
    /// released (made visible again by a stopping consumer)
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MalformedLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResyncLabels {
    /// stale (reconciled) | current (its stores unchanged: no call of its own)
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadPatchLabels {
    /// Pod | Deployment | StatefulSet | DaemonSet
    pub kind: String,
    /// ok | gone (deleted since the cache saw it) | error
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// success | error
    pub result: &'static str,
    /// The error's metric label; empty on success.
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    /// true | false
    pub ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenReviewLabels {
    /// authenticated | rejected | unavailable (the API server did not answer)
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    backend: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

/// Exports the store call counters the backends keep (one source for tests,
/// benchmarks and metrics).
#[derive(Debug)]
struct StoreCalls(Arc<CallStats>);

impl Collector for StoreCalls {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<CallLabels, Counter>::default();
        for (backend, operation, outcome, n) in self.0.snapshot() {
            family.get_or_create(&CallLabels { backend, operation, outcome: outcome.as_str() }).inc_by(n);
        }
        let metric = encoder.encode_descriptor(
            "store_calls",
            "AWS calls by backend (DynamoDB, ParameterStore, sqs), operation and outcome (ok, throttled, error)",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// The standard `process_*` metrics, without the prefix.
    process: Registry,
    /// Reconciles running now.
    pub reconciles_in_flight: Gauge,
    /// Requested reconciles that have not started.
    pub reconcile_queue_depth: Gauge,
    /// From a reconcile's request to its start, seconds.
    pub reconcile_queue_wait: Histogram,
    /// Objects whose last reconcile failed, waiting for their retry.
    pub objects_backing_off: Gauge,
    /// Reconciles by result and error label.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration, seconds.
    pub reconcile_duration: Histogram,
    /// TenantConfigs by their Ready condition, as this process last set it.
    pub objects: Family<ReadyLabels, Gauge>,
    /// 1 while this process holds the leader lease (or runs without election).
    pub leader: Gauge,
    readiness: Mutex<HashMap<String, bool>>,
    /// Event messages by outcome.
    pub event_messages: Family<MessageLabels, Counter>,
    /// Malformed messages by reason.
    pub event_malformed: Family<MalformedLabels, Counter>,
    /// Reconciles an event triggered.
    pub event_triggers: Counter,
    /// Message arrival in the queue → ConfigMap (or Secret) written, seconds.
    pub event_lag: Histogram,
    /// Shared-path reads served from the cache or filled.
    pub shared_cache: shared_cache::Lookups,
    /// Objects each resync found stale (reconciled) or current.
    pub resync_objects: Family<ResyncLabels, Counter>,
    /// Retries after a failed reconcile that had not started when due and were requested again.
    pub retries_requested_again: Counter,
    /// Config-digest patches of refreshed pods and rolled workloads.
    pub workload_patches: Family<WorkloadPatchLabels, Counter>,
    /// TokenReviews the config service made, by result.
    pub token_reviews: Family<TokenReviewLabels, Counter>,
    /// Open WatchConfig streams.
    pub config_watches: Gauge,
}

/// Encodes one gauge read at scrape time (the collectors' metrics).
fn encode_gauge(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> std::fmt::Result {
    use prometheus_client::encoding::EncodeMetric;
    let gauge = prometheus_client::metrics::gauge::ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

/// Registers `metric` under `name` and gives it back for the struct to keep.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix(PREFIX);
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        r.register_collector(Box::new(AllocatorCollector));
        let buckets = |b: &[f64]| Histogram::new(b.iter().copied());
        Metrics {
            event_messages: registered(&mut r, "event_messages", "Event messages from the queue, by outcome", Family::default()),
            event_malformed: registered(
                &mut r,
                "event_malformed_messages",
                "Messages that are not store-change events (left for the dead-letter queue), by reason",
                Family::default(),
            ),
            event_triggers: registered(&mut r, "event_triggers", "Reconciles triggered by events", Counter::default()),
            event_lag: registered(
                &mut r,
                "event_to_projection_seconds",
                "Time from an event message's arrival in the queue to the projection it caused",
                buckets(&[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            ),
            shared_cache: registered(&mut r, "shared_cache_lookups", "Shared-path reads, by cache result", Default::default()),
            resync_objects: registered(
                &mut r,
                "resync_objects",
                "Objects the periodic resync found stale (and reconciled) or current (no call of their own)",
                Family::default(),
            ),
            reconciles: registered(&mut r, "reconciles", "Reconciles by result and error label", Family::default()),
            reconcile_duration: registered(
                &mut r,
                "reconcile_duration_seconds",
                "Duration of one reconcile",
                buckets(&[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            ),
            objects: registered(&mut r, "tenant_configs", "TenantConfigs by Ready condition", Family::default()),
            leader: registered(&mut r, "leader", "1 while this process is the active controller", Gauge::default()),
            reconciles_in_flight: registered(&mut r, "reconciles_in_flight", "Reconciles running now", Gauge::default()),
            reconcile_queue_depth: registered(
                &mut r,
                "reconcile_queue_depth",
                "TenantConfigs whose reconcile was requested and has not started",
                Gauge::default(),
            ),
            reconcile_queue_wait: registered(
                &mut r,
                "reconcile_queue_wait_seconds",
                "From a reconcile's request (a watch change, an event, the resync, a retry) to its start",
                buckets(&[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            ),
            objects_backing_off: registered(
                &mut r,
                "objects_backing_off",
                "TenantConfigs whose last reconcile failed and that wait for their retry",
                Gauge::default(),
            ),
            retries_requested_again: registered(
                &mut r,
                "retries_requested_again",
                "Retries after a failed reconcile that had not started a second after they were due and were requested again",
                Counter::default(),
            ),
            workload_patches: registered(
                &mut r,
                "workload_patches",
                "Config-digest patches of refreshed pods (kind Pod) and rolled-out workloads, by result",
                Family::default(),
            ),
            token_reviews: registered(
                &mut r,
                "config_api_token_reviews",
                "TokenReviews the config service made to authenticate callers, by result",
                Family::default(),
            ),
            config_watches: registered(
                &mut r,
                "config_api_watches",
                "Open WatchConfig streams of the config service",
                Gauge::default(),
            ),
            readiness: Mutex::default(),
            registry: r,
            process,
        }
        .with_known_series()
    }
}

impl Metrics {
    /// Starts the series whose label values are known in advance at zero, so
    /// that they exist (and `increase()` counts from zero) before the first
    /// event: dashboards and alerts find every family from the start.
    fn with_known_series(self) -> Self {
        for outcome in ["received", "ignored", "malformed", "acked", "unhandled", "released"] {
            let _ = self.event_messages.get_or_create(&MessageLabels { outcome });
        }
        for reason in ["too_large", "not_json_object", "unknown_source", "wrong_shape", "invalid_value"] {
            let _ = self.event_malformed.get_or_create(&MalformedLabels { reason });
        }
        for result in ["hit", "miss"] {
            let _ = self.shared_cache.get_or_create(&CacheLabels { result });
        }
        for result in ["stale", "current"] {
            let _ = self.resync_objects.get_or_create(&ResyncLabels { result });
        }
        let _ = self.reconciles.get_or_create(&ReconcileLabels { result: "success", error: "" });
        for ready in ["true", "false"] {
            let _ = self.objects.get_or_create(&ReadyLabels { ready });
        }
        for result in ["authenticated", "rejected", "unavailable"] {
            let _ = self.token_reviews.get_or_create(&TokenReviewLabels { result });
        }
        self
    }

    /// Metrics including the backends' own counters: store calls, start-up walks.
    pub fn for_backends(backends: &BackendContext) -> Self {
        let mut metrics = Metrics::default();
        metrics.registry.register_collector(Box::new(StoreCalls(backends.stats.clone())));
        metrics.registry.register(
            "store_rate_limit_wait_seconds",
            "How long AWS calls waited for their API family's process-wide rate limit",
            backends.stats.rate_limit_wait.clone(),
        );
        let walks = &backends.tenant_walks;
        metrics.registry.register(
            "start_up_walks",
            "Tenant paths in Parameter Store walked once for the start-up pass's first applies",
            walks.walked.clone(),
        );
        metrics.registry.register(
            "start_up_walk_first_applies",
            "First applies planned against a start-up walk instead of a read of their own",
            walks.served.clone(),
        );
        metrics
    }

    pub fn workload_patched(&self, kind: &str, result: &'static str) {
        let labels = WorkloadPatchLabels { kind: kind.to_string(), result };
        self.workload_patches.get_or_create(&labels).inc();
    }

    pub fn count_retry_requested_again(&self) {
        self.retries_requested_again.inc();
    }

    pub fn reconciled(&self, error: Option<&'static str>, seconds: f64) {
        let labels = match error {
            None => ReconcileLabels { result: "success", error: "" },
            // Waiting for its tenant's turn (`--tenant-concurrency`): not an error to alert on.
            Some("tenant_busy") => ReconcileLabels { result: "deferred", error: "tenant_busy" },
            Some(error) => ReconcileLabels { result: "error", error },
        };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration.observe(seconds);
    }

    /// Records an object's Ready condition (None: the object is gone).
    pub fn set_ready(&self, object: &str, ready: Option<bool>) {
        let mut map = self.readiness.lock().unwrap();
        let old = match ready {
            Some(r) => map.insert(object.to_string(), r),
            None => map.remove(object),
        };
        if old == ready {
            return;
        }
        let label = |r: bool| ReadyLabels { ready: if r { "true" } else { "false" } };
        if let Some(old) = old {
            self.objects.get_or_create(&label(old)).dec();
        }
        if let Some(new) = ready {
            self.objects.get_or_create(&label(new)).inc();
        }
    }

    pub fn message(&self, outcome: &'static str) -> u64 {
        self.event_messages.get_or_create(&MessageLabels { outcome }).get()
    }

    pub fn count_message(&self, outcome: &'static str, n: u64) {
        self.event_messages.get_or_create(&MessageLabels { outcome }).inc_by(n);
    }

    pub fn shared_cache_lookups(&self, result: &'static str) -> u64 {
        self.shared_cache.get_or_create(&CacheLabels { result }).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode_registry(&mut out, &self.process).expect("writing to a String cannot fail");
        encode_registry(&mut out, &self.registry).expect("writing to a String cannot fail");
        encode_eof(&mut out).expect("writing to a String cannot fail");
        out
    }
}
