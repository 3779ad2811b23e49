//! Domain fixtures shared by the integration tests and benchmarks: object
//! builders, readings of status and stores, the in-process controller, and
//! one reproducible random source.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aws_sdk_dynamodb::types::AttributeValue;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{Api, Client, api::ListParams};
use serde_json::json;
use tenant_config_controller::{
    api::{ConfigStore, TenantConfig},
    events::sqs::ConsumerSettings,
    metrics::Metrics,
    reconcile::Settings,
    runtime::{self, Dependencies},
    server::Probes,
    store::{BackendContext, DEFAULT_MAX_ATTEMPTS, RateLimits, stats::CallStats},
};

/// A TenantConfig with `spec`.
#[allow(dead_code)]
pub fn tenant_config(ns: &str, name: &str, spec: serde_json::Value) -> TenantConfig {
    serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
        "metadata": { "name": name, "namespace": ns }, "spec": spec,
    }))
    .expect("a TenantConfig")
}

/// A ConfigStore with `spec`.
#[allow(dead_code)]
pub fn config_store(name: &str, spec: serde_json::Value) -> ConfigStore {
    serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore",
        "metadata": { "name": name }, "spec": spec,
    }))
    .expect("a ConfigStore")
}

/// A Namespace with `labels` (the tenant label makes it a tenant's).
#[allow(dead_code)]
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels } }),
    )
    .expect("a Namespace")
}

/// `(status, reason)` of a condition.
#[allow(dead_code)]
pub fn condition(tc: &TenantConfig, type_: &str) -> Option<(String, String)> {
    let c = tc.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

/// Ready=True.
#[allow(dead_code)]
pub fn is_ready(tc: &TenantConfig) -> bool {
    condition(tc, "Ready").is_some_and(|(status, _)| status == "True")
}

/// TenantConfigs in `ns` that are Ready (0 when the list fails: callers poll).
#[allow(dead_code)]
pub async fn ready_count(client: &Client, ns: &str) -> usize {
    let Ok(list) = Api::<TenantConfig>::namespaced(client.clone(), ns).list(&ListParams::default()).await else {
        return 0;
    };
    list.items.iter().filter(|tc| is_ready(tc)).count()
}

/// Waits until `ns/name` is Ready=`status` (with `reason`, when given); returns the object.
#[allow(dead_code)]
pub async fn wait_ready(client: &Client, ns: &str, name: &str, status: &str, reason: Option<&str>) -> TenantConfig {
    let api = Api::<TenantConfig>::namespaced(client.clone(), ns);
    let what = format!("{ns}/{name} Ready={status} reason={}", reason.unwrap_or("any"));
    super::eventually(&what, || async {
        let tc = api.get(name).await.ok()?;
        let (s, r) = condition(&tc, "Ready")?;
        (s == status && reason.is_none_or(|reason| r == reason)).then_some(tc)
    })
    .await
}

/// ConfigMaps of `ns` by name.
#[allow(dead_code)]
pub async fn config_maps(client: &Client, ns: &str) -> BTreeMap<String, ConfigMap> {
    let list = Api::<ConfigMap>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap();
    list.items.into_iter().map(|cm| (cm.metadata.name.clone().unwrap(), cm)).collect()
}

/// The `data` map of a DynamoDB item (strongly consistent read); `None` when
/// there is no item.
#[allow(dead_code)]
pub async fn item_data(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    sk: &str,
) -> Option<BTreeMap<String, String>> {
    let item = ddb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.into()))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item?;
    let data = item.get("data").and_then(|d| d.as_m().ok());
    Some(data.into_iter().flatten().map(|(k, v)| (k.clone(), v.as_s().unwrap().clone())).collect())
}

/// xorshift64*: reproducible randomness without another dependency.
#[allow(dead_code)]
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    /// Seeded from `variable` when set (to replay a run), else from the clock;
    /// prints the seed either way.
    pub fn seeded_from_env(variable: &str) -> Rng {
        let seed = std::env::var(variable).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        }) | 1;
        eprintln!("{variable}={seed}");
        Rng(seed)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    /// An index in `0..n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// The controller running inside the test process, wired as `main` wires it
/// (store call counters exported through the metrics).
#[allow(dead_code)]
pub struct InProcessController {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    pub stats: Arc<CallStats>,
    pub metrics: Arc<Metrics>,
    pub probes: Arc<Probes>,
}

#[allow(dead_code)]
impl InProcessController {
    /// Starts it against the local stack; `events` adds the queue consumer.
    pub fn start(
        client: &Client,
        sdk: &aws_config::SdkConfig,
        settings: Settings,
        events: Option<ConsumerSettings>,
    ) -> Self {
        let backend_ctx = BackendContext::new(sdk.clone(), RateLimits::default(), DEFAULT_MAX_ATTEMPTS);
        let stats = backend_ctx.stats.clone();
        let metrics = Arc::new(Metrics::for_backends(&backend_ctx));
        let probes = Arc::new(Probes::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let deps = Dependencies {
            client: client.clone(),
            settings,
            backend_ctx,
            events,
            metrics: metrics.clone(),
            probes: probes.clone(),
            workloads: Default::default(),
        };
        let task = tokio::spawn(runtime::run(deps, async move {
            let _ = stopped.await;
        }));
        InProcessController { stop, task, stats, metrics, probes }
    }

    /// Graceful stop, as on SIGTERM; fails the test if it takes over `within`.
    pub async fn stop_within(self, within: Duration) {
        let _ = self.stop.send(());
        tokio::time::timeout(within, self.task).await.expect("controller stops in time").expect("controller task");
    }

    /// Abrupt stop, as on SIGKILL: in-flight work is simply gone.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
