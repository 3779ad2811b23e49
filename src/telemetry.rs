//! Prometheus metrics (prometheus-client), all under the `tenant_config_` prefix,
//! with low-cardinality labels only: never a tenant, namespace or object name.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

pub const PREFIX: &str = "tenant_config";

/// What happened to an event message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// received | ignored | malformed | acked | redelivered
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MalformedLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// hit | miss
    pub result: &'static str,
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// Event messages by outcome.
    pub event_messages: Family<MessageLabels, Counter>,
    /// Malformed messages by reason.
    pub event_malformed: Family<MalformedLabels, Counter>,
    /// Reconciles an event triggered.
    pub event_triggers: Counter,
    /// Message arrival in the queue → ConfigMap (or Secret) written, seconds.
    pub event_lag: Histogram,
    /// Shared-path reads served from the cache or filled.
    pub shared_cache: Family<CacheLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let event_messages = Family::<MessageLabels, Counter>::default();
        registry.register("event_messages", "Event messages from the queue, by outcome", event_messages.clone());
        let event_malformed = Family::<MalformedLabels, Counter>::default();
        registry.register(
            "event_malformed_messages",
            "Messages that are not store-change events (left for the dead-letter queue), by reason",
            event_malformed.clone(),
        );
        let event_triggers = Counter::default();
        registry.register("event_triggers", "Reconciles triggered by events", event_triggers.clone());
        let event_lag = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        registry.register(
            "event_to_projection_seconds",
            "Time from an event message's arrival in the queue to the projection it caused",
            event_lag.clone(),
        );
        let shared_cache = Family::<CacheLabels, Counter>::default();
        registry.register("shared_cache_lookups", "Shared-path reads, by cache result", shared_cache.clone());
        Metrics { registry, event_messages, event_malformed, event_triggers, event_lag, shared_cache }
    }
}

impl Metrics {
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
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
