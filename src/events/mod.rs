//! Store-change events (DESIGN.md §6) — messages on the event queue saying a
//! store changed, not Kubernetes Events: parse, find the affected TenantConfigs,
//! trigger their reconciles, acknowledge once they are done.
//!
//! Events are hints, never data: a triggered reconcile re-reads the stores.

pub mod envelope;
pub mod index;
pub mod sqs;
pub mod tracker;

use std::sync::Arc;

use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};

use crate::{
    api::{ConfigStore, Guarded},
    store::{
        StoreRef,
        change::{self, Target},
        shared_cache::SharedCache,
        tenant_walks::TenantWalks,
    },
};
use envelope::Envelope;
use index::Index;

/// The EventBridge event patterns whose matches the queue must receive: one for
/// SSM changes under the given path prefixes (tenant prefixes and shared paths),
/// one for the DynamoDB stream records the named Pipe forwards. The single
/// source for the rules in `examples/aws/` and the local setup
/// (`tenant-config-controller event-patterns`).
pub fn event_patterns(parameter_prefixes: &[String], pipe_name: &str) -> Value {
    let prefixes: Vec<Value> =
        parameter_prefixes.iter().map(|p| json!({ "prefix": format!("{}/", p.trim_end_matches('/')) })).collect();
    json!({
        "parameter-store": {
            "source": [envelope::SSM_SOURCE],
            "detail-type": [envelope::SSM_DETAIL_TYPE],
            "detail": { "name": prefixes },
        },
        "dynamodb": {
            // A Pipe that targets a bus sends its events with source "Pipe <name>".
            "source": [format!("Pipe {pipe_name}")],
            "detail-type": [envelope::DYNAMODB_PIPE_DETAIL_TYPE],
            "detail": { "eventSource": [envelope::DYNAMODB_EVENT_SOURCE] },
        },
    })
}

/// Routes parsed events to TenantConfigs through the ConfigStores and the index.
pub struct EventRouter {
    pub stores: Store<ConfigStore>,
    pub index: Arc<Index>,
    pub objects: Store<Guarded>,
    pub shared_cache: Arc<SharedCache>,
    /// The start-up pass's tenant walks: a reported change is not taken from one.
    pub tenant_walks: Arc<TenantWalks>,
}

impl EventRouter {
    pub fn targets(&self, envelope: &Envelope) -> Vec<Target> {
        let Some(change) = &envelope.change else { return Vec::new() };
        let stores = self.stores.state();
        change::locate(change, &StoreRef::all(&stores))
    }
}

impl sqs::Router for EventRouter {
    fn route(&self, envelope: &Envelope) -> sqs::Routed {
        if let Some(change) = &envelope.change {
            self.tenant_walks.reported(change);
        }
        let targets = self.targets(envelope);
        let shared_only = !targets.is_empty() && targets.iter().all(|t| matches!(t, Target::Shared { .. }));
        let mut objects = Vec::new();
        for target in targets {
            // Before any reconcile is triggered: each of them must read afresh.
            if let Target::Shared { store, name } = &target {
                self.shared_cache.invalidate(store, name);
            }
            objects.extend(self.index.objects_for(&target));
        }
        objects.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        objects.dedup();
        sqs::Routed { objects, shared_only }
    }

    fn exists(&self, obj: &ObjectRef<Guarded>) -> bool {
        self.objects.get(obj).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_prefixes_segment_wise() {
        let patterns = event_patterns(&["/tenant-config".into(), "/tenant-config-shared/".into()], "tc-pipe");
        assert_eq!(
            patterns["parameter-store"]["detail"]["name"],
            json!([{"prefix": "/tenant-config/"}, {"prefix": "/tenant-config-shared/"}])
        );
        assert_eq!(patterns["parameter-store"]["source"], json!(["aws.ssm"]));
        assert_eq!(patterns["dynamodb"]["detail-type"], json!(["Event from aws:dynamodb"]));
        assert_eq!(patterns["dynamodb"]["source"], json!(["Pipe tc-pipe"]));
    }
}
