//! Refresh: opted-in pods that mount a changed projection get the new config
//! digest as an annotation, which makes the kubelet sync them (and update
//! the mounted files) at once instead of at its next periodic sync.

use std::sync::Arc;

use futures::{StreamExt, stream::FuturesUnordered};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    runtime::{reflector, reflector::ObjectRef},
};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info};

use super::{Change, Shared, decide, described, listed, refs};
use crate::api::names::{CONFIG_DIGEST_ANNOTATION, REFRESH_LABEL};

/// Watches the opted-in pods (filtered by label on the server, cached as
/// metadata plus volume names) and refreshes them on every change.
pub async fn run(shared: Arc<Shared>, changes: UnboundedReceiver<Arc<Change>>) {
    let (pods, cache) = super::labelled_cache::<Pod>(&shared.client, REFRESH_LABEL, slim);
    tokio::select! {
        _ = cache => {}
        _ = follow(shared, pods, changes) => {}
    }
}

fn slim(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    let digest = pod.annotations().get(CONFIG_DIGEST_ANNOTATION).cloned();
    pod.metadata.annotations = digest.map(|d| [(CONFIG_DIGEST_ANNOTATION.to_string(), d)].into());
    pod.metadata.labels = None;
    pod.status = None;
    if let Some(spec) = &mut pod.spec {
        refs::slim_spec(spec);
    }
}

async fn follow(shared: Arc<Shared>, pods: reflector::Store<Pod>, mut changes: UnboundedReceiver<Arc<Change>>) {
    // Changes wait in the channel until the pods are listed: none is missed.
    if pods.wait_until_ready().await.is_err() {
        return;
    }
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => {
                    let targets = mounting(&pods, &change);
                    if !targets.is_empty() {
                        in_flight.push(refresh(shared.clone(), pods.clone(), change, targets));
                    }
                }
                None => break,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// The cached pods in the change's namespace that mount one of its objects.
fn mounting(pods: &reflector::Store<Pod>, change: &Change) -> Vec<ObjectRef<Pod>> {
    pods.state()
        .iter()
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(change.namespace.as_str()))
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| pod.spec.as_ref().is_some_and(|spec| !refs::mounted(spec).is_disjoint(&change.references)))
        .map(|pod| ObjectRef::from_obj(&**pod))
        .collect()
}

async fn refresh(shared: Arc<Shared>, pods: reflector::Store<Pod>, change: Arc<Change>, targets: Vec<ObjectRef<Pod>>) {
    let ns = change.namespace.as_str();
    let refreshed: Vec<String> = futures::stream::iter(targets)
        .map(|target| {
            let (shared, pods) = (shared.clone(), pods.clone());
            async move {
                // The latest cached copy, and the digest as of now: a later
                // change already in the map is carried along.
                let pod = pods.get(&target)?;
                // Over everything it reads, as rollout computes it: a pod
                // created by a rolled-out template already carries it.
                let reads = refs::read(pod.spec.as_ref()?);
                let desired = shared.desired(ns, &reads);
                let current = pod.annotations().get(CONFIG_DIGEST_ANNOTATION).map(String::as_str);
                let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
                let Some(digest) = decide::patch_to(current, created, &desired) else {
                    debug!(pod = %pod.name_any(), "pod already carries the digest");
                    return None;
                };
                let patch = json!({ "metadata": { "annotations": { CONFIG_DIGEST_ANNOTATION: digest } } });
                shared.patch(&*pod, patch).await.then(|| pod.name_any())
            }
        })
        .buffer_unordered(shared.concurrency)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    if refreshed.is_empty() {
        return;
    }
    info!(namespace = ns, pods = refreshed.len(), "refreshed pods");
    let note = format!(
        "refreshed {} pod(s) mounting {}: {}",
        refreshed.len(),
        described(&change.references),
        listed(&refreshed)
    );
    shared.publish(&change.by, "PodsRefreshed", note).await;
}
