//! Rollout: opted-in Deployments, StatefulSets and DaemonSets that read a
//! changed projection (env or volume) get the new config digest on their pod
//! template — a normal rolling update — once the burst of changes settled.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::{ObjectReference, PodTemplateSpec},
    },
};
use kube::{
    Resource, ResourceExt,
    runtime::{reflector, reflector::ObjectRef},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::{sync::mpsc::UnboundedReceiver, time::Instant};
use tracing::{debug, info};

use super::{Change, Shared, decide, described, refs};
use crate::api::names::{CONFIG_DIGEST_ANNOTATION, ROLLOUT_LABEL};

/// A kind of workload whose pod template can be rolled.
pub trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn template(&self) -> &PodTemplateSpec;
    fn template_mut(&mut self) -> &mut PodTemplateSpec;
}

impl Workload for Deployment {
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
    fn template_mut(&mut self) -> &mut PodTemplateSpec {
        &mut self.spec.template
    }
}

impl Workload for StatefulSet {
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
    fn template_mut(&mut self) -> &mut PodTemplateSpec {
        &mut self.spec.template
    }
}

impl Workload for DaemonSet {
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
    fn template_mut(&mut self) -> &mut PodTemplateSpec {
        &mut self.spec.template
    }
}

/// The opted-in workloads of one kind, cached slim.
struct Cached<K: Workload> {
    store: reflector::Store<K>,
}

impl<K: Workload> Cached<K> {
    /// The cache and the watch that fills it (filtered by label on the server).
    fn new(client: &kube::Client) -> (Self, BoxFuture<'static, ()>) {
        let (store, fill) = super::labelled_cache::<K>(client, ROLLOUT_LABEL, slim::<K>);
        (Cached { store }, fill)
    }

    /// Names of the cached workloads in the change's namespace reading one of its objects.
    fn reading(&self, change: &Change) -> Vec<String> {
        self.store
            .state()
            .iter()
            .filter(|w| w.meta().namespace.as_deref() == Some(change.namespace.as_str()))
            .filter(|w| {
                w.template().spec.as_ref().is_some_and(|spec| !refs::read(spec).is_disjoint(&change.references))
            })
            .map(|w| w.name_any())
            .collect()
    }

    /// Patches the workload's template if it is behind. Returns whether it did.
    async fn roll(&self, shared: &Shared, namespace: &str, name: &str) -> Option<(String, BTreeSet<refs::Reference>)> {
        let workload = self.store.get(&ObjectRef::new(name).within(namespace))?;
        let template = workload.template();
        let reads = refs::read(template.spec.as_ref()?);
        let desired = shared.desired(namespace, &reads);
        let current = template.metadata.as_ref().and_then(|m| m.annotations.as_ref()?.get(CONFIG_DIGEST_ANNOTATION));
        let created = workload.meta().creation_timestamp.as_ref().map(|t| t.0);
        let Some(digest) = decide::patch_to(current.map(String::as_str), created, &desired) else {
            debug!(kind = %K::kind(&()), namespace, name, ?desired, "workload current, or what it reads not known yet");
            return None;
        };
        let patch =
            json!({ "spec": { "template": { "metadata": { "annotations": { CONFIG_DIGEST_ANNOTATION: &digest } } } } });
        shared.patch(&*workload, patch).await.then_some((digest, reads))
    }
}

fn slim<K: Workload>(workload: &mut K) {
    workload.managed_fields_mut().clear();
    workload.annotations_mut().clear();
    refs::slim_template(workload.template_mut());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

type Key = (WorkloadKind, String, String);

/// A rollout waiting for its burst of changes to settle.
struct Pending {
    first: Instant,
    due: Instant,
    /// TenantConfigs whose changes it follows (uid → reference).
    by: BTreeMap<String, ObjectReference>,
}

/// Watches the opted-in workloads and rolls them when what they read changed
/// and then stayed unchanged for the window.
pub async fn run(shared: Arc<Shared>, window: std::time::Duration, changes: UnboundedReceiver<Arc<Change>>) {
    let (deployments, fill_deployments) = Cached::<Deployment>::new(&shared.client);
    let (statefulsets, fill_statefulsets) = Cached::<StatefulSet>::new(&shared.client);
    let (daemonsets, fill_daemonsets) = Cached::<DaemonSet>::new(&shared.client);
    let caches = Caches { deployments, statefulsets, daemonsets };
    tokio::select! {
        _ = futures::future::join3(fill_deployments, fill_statefulsets, fill_daemonsets) => {}
        _ = follow(shared, caches, window, changes) => {}
    }
}

struct Caches {
    deployments: Cached<Deployment>,
    statefulsets: Cached<StatefulSet>,
    daemonsets: Cached<DaemonSet>,
}

impl Caches {
    async fn ready(&self) -> bool {
        self.deployments.store.wait_until_ready().await.is_ok()
            && self.statefulsets.store.wait_until_ready().await.is_ok()
            && self.daemonsets.store.wait_until_ready().await.is_ok()
    }

    fn reading(&self, change: &Change) -> Vec<Key> {
        let ns = &change.namespace;
        let keyed = |kind, names: Vec<String>| names.into_iter().map(move |n| (kind, ns.clone(), n));
        keyed(WorkloadKind::Deployment, self.deployments.reading(change))
            .chain(keyed(WorkloadKind::StatefulSet, self.statefulsets.reading(change)))
            .chain(keyed(WorkloadKind::DaemonSet, self.daemonsets.reading(change)))
            .collect()
    }

    async fn roll(&self, shared: &Shared, (kind, ns, name): &Key) -> Option<(String, BTreeSet<refs::Reference>)> {
        match kind {
            WorkloadKind::Deployment => self.deployments.roll(shared, ns, name).await,
            WorkloadKind::StatefulSet => self.statefulsets.roll(shared, ns, name).await,
            WorkloadKind::DaemonSet => self.daemonsets.roll(shared, ns, name).await,
        }
    }
}

async fn follow(
    shared: Arc<Shared>,
    caches: Caches,
    window: std::time::Duration,
    mut changes: UnboundedReceiver<Arc<Change>>,
) {
    // Changes wait in the channel until the workloads are listed.
    if !caches.ready().await {
        return;
    }
    let longest = window * 6;
    let mut pending: HashMap<Key, Pending> = HashMap::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        let next_due = pending.values().map(|p| p.due).min();
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else { break };
                let now = Instant::now();
                for key in caches.reading(&change) {
                    let uid = change.by.uid.clone().unwrap_or_default();
                    let entry = pending.entry(key).or_insert_with(|| Pending { first: now, due: now, by: BTreeMap::new() });
                    entry.due = (now + window).min(entry.first + longest);
                    entry.by.insert(uid, change.by.clone());
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                let due: Vec<Key> = pending.iter().filter(|(_, p)| p.due <= now).map(|(k, _)| k.clone()).collect();
                for key in due {
                    let Pending { by, .. } = pending.remove(&key).expect("listed above");
                    let (shared, caches) = (shared.clone(), &caches);
                    in_flight.push(async move {
                        if let Some((digest, reads)) = caches.roll(&shared, &key).await {
                            let (kind, ns, name) = &key;
                            info!(kind = ?kind, namespace = %ns, name = %name, %digest, "rolled out");
                            let note = format!("rolling out {kind:?} {name}: {} changed (config digest {digest})", described(&reads));
                            for by in by.values() {
                                shared.publish(by, "RolledOut", note.clone()).await;
                            }
                        }
                    });
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}
