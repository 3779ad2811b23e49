//! Pods see a projected change without waiting for the kubelet's sync
//! (DESIGN.md §10). Both features are opt-in per workload:
//!
//! - [`refresh`]: pods labelled `tenantconfig.io/refresh: "true"` that mount a
//!   projected ConfigMap/Secret get annotation `tenantconfig.io/config-digest`
//!   set when its content changes; an annotation change makes the kubelet sync
//!   the pod, and its volumes, at once.
//! - [`rollout`]: Deployments, StatefulSets and DaemonSets labelled
//!   `tenantconfig.io/rollout: "true"` that read one get the annotation on
//!   their pod template: one rolling update per settled burst of changes.
//!
//! The reconciler tells [`Projections`] what it projected; [`decide`] (pure)
//! says what each reader should carry; the IO is patches, rate-limited and
//! bounded. Only the namespace of the TenantConfig is ever looked at.

pub mod decide;
pub mod projections;
pub mod refresh;
pub mod refs;
pub mod rollout;

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::{NamespaceResourceScope, api::core::v1::ObjectReference};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::{events::EventType, reflector::Store},
};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tracing::warn;

pub use projections::{Change, Projections};

use crate::{
    api::Guarded,
    metrics::Metrics,
    recorder::{Recorder, Said},
};
use decide::{Desired, Known};
use refs::{Kind, Reference};

/// Flags of the workload features (`tenant-config-controller run`).
#[derive(Clone, Debug, clap::Args)]
#[group(id = "workload_settings")]
#[command(next_help_heading = "Pod refresh and workload rollout")]
pub struct Settings {
    /// Refresh pods labelled `tenantconfig.io/refresh: "true"`: set their annotation
    /// `tenantconfig.io/config-digest` when a projected ConfigMap or Secret they mount changes,
    /// so the kubelet updates the mounted files at once. Needs `list`, `watch`, `patch` on pods.
    #[arg(long, env = "TENANT_CONFIG_REFRESH_PODS", default_value_t = false, action = clap::ArgAction::Set)]
    pub refresh_pods: bool,
    /// Roll out Deployments, StatefulSets and DaemonSets labelled `tenantconfig.io/rollout: "true"`
    /// when a projected ConfigMap or Secret they read changes (pod-template annotation
    /// `tenantconfig.io/config-digest`). Needs `list`, `watch`, `patch` on them.
    #[arg(long, env = "TENANT_CONFIG_ROLLOUT_WORKLOADS", default_value_t = false, action = clap::ArgAction::Set)]
    pub rollout_workloads: bool,
    /// Pod and workload patches per second, process-wide.
    #[arg(long, env = "TENANT_CONFIG_WORKLOAD_PATCH_RATE", default_value_t = 50)]
    pub workload_patch_rate: u32,
    /// Pod and workload patches in flight at once.
    #[arg(long, env = "TENANT_CONFIG_WORKLOAD_PATCH_CONCURRENCY", default_value_t = 8)]
    pub workload_patch_concurrency: usize,
    /// A workload is rolled out once what it reads has not changed for this long (and at the
    /// latest 6× this after the first change), so a burst of changes is one rollout.
    #[arg(long, env = "TENANT_CONFIG_ROLLOUT_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rollout_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            refresh_pods: false,
            rollout_workloads: false,
            workload_patch_rate: 50,
            workload_patch_concurrency: 8,
            rollout_window: Duration::from_secs(10),
        }
    }
}

/// What refresh and rollout share: the client, the patch budget, what is
/// projected, and where Events go.
pub struct Shared {
    pub client: Client,
    pub projections: Arc<Projections>,
    /// Which names a namespace's TenantConfigs project (for a reference not
    /// seen yet since the start).
    pub tenant_configs: Store<Guarded>,
    pub secure_projection: bool,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    limiter: DefaultDirectRateLimiter,
    permits: Semaphore,
    concurrency: usize,
}

impl Shared {
    pub fn new(
        client: Client,
        settings: &Settings,
        projections: Arc<Projections>,
        tenant_configs: Store<Guarded>,
        secure_projection: bool,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let rate = NonZeroU32::new(settings.workload_patch_rate).unwrap_or(NonZeroU32::MAX);
        let concurrency = settings.workload_patch_concurrency.max(1);
        Shared {
            client,
            projections,
            tenant_configs,
            secure_projection,
            recorder,
            metrics,
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            permits: Semaphore::new(concurrency),
            concurrency,
        }
    }

    /// The digest a reader of `references` in `namespace` should carry.
    pub fn desired(&self, namespace: &str, references: &std::collections::BTreeSet<Reference>) -> Desired {
        self.projections.with_seen(|seen| {
            decide::desired(references, |reference| match seen.get(&(namespace.to_string(), reference.clone())) {
                Some(seen) => Known::Seen(seen),
                None if self.is_projected(namespace, reference) => Known::NotYetSeen,
                None => Known::NotProjected,
            })
        })
    }

    /// Whether a TenantConfig in `namespace` projects `reference`.
    fn is_projected(&self, namespace: &str, (kind, name): &Reference) -> bool {
        self.tenant_configs.state().iter().filter_map(|g| g.0.as_ref().ok()).any(|tc| {
            tc.metadata.namespace.as_deref() == Some(namespace)
                && match kind {
                    Kind::ConfigMap => tc.config_map_name() == name,
                    Kind::Secret => {
                        self.secure_projection
                            && tc.spec.projection.as_ref().and_then(|p| p.secret_name.as_deref()) == Some(name.as_str())
                    }
                }
        })
    }

    /// A JSON merge patch of the object the cache holds (its uid is the
    /// precondition: an object deleted and recreated since — which may never
    /// have opted in — is not patched), within the rate and concurrency
    /// budget; counted by kind and result. Returns whether it was applied.
    async fn patch<K>(&self, object: &K, mut patch: serde_json::Value) -> bool
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let (Some(namespace), Some(name)) = (object.meta().namespace.as_deref(), object.meta().name.as_deref()) else {
            return false;
        };
        patch["metadata"]["uid"] = object.meta().uid.clone().into();
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        self.limiter.until_ready().await;
        let kind = K::kind(&());
        let result = Api::<K>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let outcome = match result {
            Ok(_) => "ok",
            // Gone since the cache saw it, or replaced: nothing to do.
            Err(kube::Error::Api(e)) if e.code == 404 => "gone",
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("metadata.uid") => "gone",
            Err(e) => {
                warn!(kind = %kind, namespace, name, error = %e, "could not patch the config digest");
                "error"
            }
        };
        self.metrics.workload_patched(&kind, outcome);
        outcome == "ok"
    }

    async fn publish(&self, by: &ObjectReference, reason: &str, note: String) {
        let said = Said { regarding: by, type_: EventType::Normal, reason, action: "Notify", note: &note };
        if let Err(e) = self.recorder.publish(said).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

/// A cache of the objects labelled `{label}=true` (filtered by the API
/// server), each slimmed by `slim`, and the watch that fills it. A failing
/// watch (no RBAC for it) is logged: nothing would ever be followed.
fn labelled_cache<K>(
    client: &Client,
    label: &str,
    slim: fn(&mut K),
) -> (Store<K>, futures::future::BoxFuture<'static, ()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let watch = watcher::Config::default().labels(&format!("{label}=true")).any_semantic();
    let fill = reflector::reflector(writer, watcher(Api::<K>::all(client.clone()), watch).modify(slim))
        .default_backoff()
        .for_each(|event| {
            if let Err(e) = event {
                warn!(kind = %K::kind(&()), error = %e, "workload watch failed (are its RBAC rules installed?); retrying with backoff");
            }
            futures::future::ready(())
        });
    (store, Box::pin(fill))
}

/// Names for an Event: a few, then how many more.
fn listed(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// "ConfigMap a, Secret b".
fn described(references: &std::collections::BTreeSet<Reference>) -> String {
    references.iter().map(|(kind, name)| format!("{} {name}", kind.as_str())).collect::<Vec<_>>().join(", ")
}
