//! For the driver's unit tests: a [`Context`] on kube's mock API server
//! (tower-test), which records every request and answers it as a real API
//! server would for the few calls a reconcile makes. The real-server tests
//! (tests/) prove the same paths end to end; these pin the outcome → status
//! mapping without a network.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::{
    Client,
    client::Body,
    runtime::reflector::{self, ObjectRef},
};
use serde_json::{Value, json};

use super::{
    context::{Caches, Claims, Context, Kube, Outbound, Progress, Stores},
    ledgers::Ledgers,
    settings::Settings,
};
use crate::{
    api::{Guarded, TenantConfig, names::FIELD_MANAGER},
    metrics::Metrics,
    recorder::Recorder,
    store::{BackendContext, Location, RateLimits, shared_cache::SharedCache},
    workloads::Projections,
};

/// A request the mock API server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// The mock API server: every request, in order.
#[derive(Clone, Default)]
pub struct ApiServer {
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl ApiServer {
    /// Starts answering on a mock client's other end: GETs are 404 (nothing
    /// exists), a status patch returns `object`, a create or patch echoes what
    /// was sent.
    pub fn start(object: Value) -> (Client, ApiServer) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = ApiServer::default();
        let seen = server.seen.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let bytes = request.into_body().collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                seen.lock().unwrap().push(Seen { method: method.clone(), path: path.clone(), body: body.clone() });
                let (code, reply) = match method.as_str() {
                    "GET" => (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                    ),
                    "PATCH" if path.ends_with("/status") => (200, object.clone()),
                    _ => (200, body),
                };
                let response = Response::builder().status(code).body(Body::from(reply.to_string().into_bytes()));
                respond.send_response(response.unwrap());
            }
        });
        (Client::new(service, "default"), server)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct NoClaims;

impl Claims for NoClaims {
    fn claimed_by_another(&self, _: &Location, _: &ObjectRef<Guarded>) -> bool {
        false
    }
}

struct NoProgress;

impl Progress for NoProgress {
    fn projected(&self, _: &ObjectRef<Guarded>, _: std::time::Instant) {}
    fn succeeded(&self, _: &ObjectRef<Guarded>, _: std::time::Instant) {}
}

/// A context on `client` with empty caches, no stores and nobody listening.
pub fn context(client: Client) -> Context {
    let metrics = Arc::new(Metrics::default());
    let sdk = aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
    let backend_ctx = BackendContext::new(sdk, RateLimits::default(), 1);
    let shared_cache = Arc::new(SharedCache::new(std::time::Duration::from_secs(60), metrics.shared_cache.clone()));
    let (retries_due, _) = futures::channel::mpsc::unbounded();
    Context {
        settings: Settings::default(),
        kube: Kube { client: client.clone(), recorder: Arc::new(Recorder::new(client, FIELD_MANAGER)) },
        caches: Caches {
            config_stores: reflector::store().0,
            namespaces: reflector::store().0,
            tenant_configs: reflector::store().0,
            synced: tokio::sync::watch::channel(true).1,
        },
        stores: Stores::new(backend_ctx, shared_cache),
        ledgers: Ledgers::new(Default::default(), prometheus_client::metrics::histogram::Histogram::new([1.0]), 16),
        outbound: Outbound {
            progress: Arc::new(NoProgress),
            claims: Arc::new(NoClaims),
            projections: Arc::new(Projections::default()),
            retries_due,
        },
        metrics,
    }
}

/// A TenantConfig as the watch would deliver it: with a uid, a generation and
/// this controller's finalizer.
pub fn tenant_config(spec: Value, status: Option<Value>) -> Value {
    json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
        "metadata": {"name": "payments", "namespace": "acme-prod", "uid": "u-1", "generation": 2,
                     "finalizers": [crate::api::names::FINALIZER]},
        "spec": spec,
        "status": status,
    })
}

pub fn typed(object: &Value) -> TenantConfig {
    serde_json::from_value(object.clone()).expect("a TenantConfig")
}
