//! What the config service answers from: its own watches of the projected
//! ConfigMaps (this controller's, by label), of TenantConfigs (slimmed to what
//! reads need: no entries, no includes), of namespaces' labels and of pods'
//! names and uids (a bound token's pod gone ends its watches). Its own so
//! that every replica serves, the standby too: reads need no leadership.
//! Every change is announced to the open watches of its namespace only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::{
    Api, Client, Resource,
    api::PartialObjectMeta,
    runtime::{WatchStreamExt, reflector, reflector::ObjectRef, watcher},
};
use tokio::sync::watch;
use tracing::warn;

use super::auth::BoundPod;

use crate::api::{
    Guarded,
    names::{FIELD_MANAGER, MANAGED_BY_LABEL},
};

/// The service's caches and the announcements of their changes.
#[derive(Clone)]
pub struct View {
    pub config_maps: reflector::Store<ConfigMap>,
    pub tenant_configs: reflector::Store<Guarded>,
    pub namespaces: reflector::Store<PartialObjectMeta<Namespace>>,
    pub pods: reflector::Store<PartialObjectMeta<Pod>>,
    pub changes: Changes,
    /// True once all four watches have listed.
    pub ready: watch::Receiver<bool>,
}

/// Change announcements by namespace: a change wakes the watches of its own
/// namespace only, and a watch that was busy sees one wake-up for many
/// changes (it re-reads the current state, so nothing is lost).
#[derive(Clone, Default)]
pub struct Changes(Arc<Mutex<HashMap<String, watch::Sender<()>>>>);

impl Changes {
    /// Wakes on each later change in `namespace`.
    pub fn subscribe(&self, namespace: &str) -> watch::Receiver<()> {
        let mut by_namespace = self.0.lock().unwrap();
        by_namespace.entry(namespace.to_string()).or_insert_with(|| watch::channel(()).0).subscribe()
    }

    fn announce(&self, namespace: &str) {
        let mut by_namespace = self.0.lock().unwrap();
        if let Some(sender) = by_namespace.get(namespace) {
            if sender.receiver_count() == 0 {
                by_namespace.remove(namespace);
            } else {
                sender.send_replace(());
            }
        }
    }
}

impl View {
    /// Whether `pod` (a bound token's) still exists, as this replica last saw.
    pub fn pod_exists(&self, namespace: &str, pod: &BoundPod) -> bool {
        let found = self.pods.get(&ObjectRef::new(&pod.name).within(namespace));
        found.is_some_and(|p| p.metadata.uid.as_deref() == Some(pod.uid.as_str()))
    }
}

impl View {
    /// The view and the future that keeps it current (run it as long as the service serves).
    pub fn start(client: &Client) -> (View, impl std::future::Future<Output = ()> + Send + 'static) {
        let changes = Changes::default();
        let (listed_tx, ready) = watch::channel(false);
        let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
        let (config_maps, cm_writer) = reflector::store();
        let cm_stream = watcher(Api::<ConfigMap>::all(client.clone()), ours).modify(applied_time_only);
        let (tenant_configs, tc_writer) = reflector::store();
        let tc_stream = watcher(Api::<Guarded>::all(client.clone()), watcher::Config::default()).modify(slim);
        let (namespaces, ns_writer) = reflector::store();
        let ns_stream = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default());
        let (pods, pod_writer) = reflector::store();
        let pod_stream =
            watcher(Api::<PartialObjectMeta<Pod>>::all(client.clone()), watcher::Config::default()).modify(names_only);
        let view = View { config_maps, tenant_configs, namespaces, pods, changes: changes.clone(), ready };
        let listed = Arc::new(Mutex::new([false; 4]));
        let announce = move |which: usize, namespace: Option<String>, init_done: bool| {
            if let Some(ns) = namespace {
                changes.announce(&ns);
            }
            if init_done {
                let mut listed = listed.lock().unwrap();
                listed[which] = true;
                if listed.iter().all(|l| *l) {
                    let _ = listed_tx.send(true);
                }
            }
        };
        let (a1, a2, a3, a4) = (announce.clone(), announce.clone(), announce.clone(), announce);
        let cms = drive(reflector::reflector(cm_writer, cm_stream), move |e| a1(0, namespace_of(e), done(e)));
        let tcs = drive(reflector::reflector(tc_writer, tc_stream), move |e| a2(1, namespace_of(e), done(e)));
        let nss = drive(reflector::reflector(ns_writer, ns_stream), move |e| a3(2, name_of(e), done(e)));
        // A pod's updates (status, mostly) concern no watch; its deletion does.
        let pods = drive(reflector::reflector(pod_writer, pod_stream), move |e| a4(3, deleted_in(e), done(e)));
        let run = async move {
            tokio::join!(cms, tcs, nss, pods);
        };
        (view, run)
    }
}

/// A TenantConfig as reads need it: its entries and includes are never served.
fn slim(tc: &mut Guarded) {
    crate::api::slim_for_cache(tc);
    if let Ok(tc) = &mut tc.0 {
        tc.spec.entries = Vec::new();
        tc.spec.include = Vec::new();
    }
}

/// Of the managed fields, only when this controller last applied the
/// ConfigMap (a config's `updated`): its content's time, which the
/// TenantConfig's status, written after the ConfigMap, may not show yet.
fn applied_time_only(cm: &mut ConfigMap) {
    if let Some(entries) = &mut cm.metadata.managed_fields {
        entries.retain(|e| e.manager.as_deref() == Some(FIELD_MANAGER) && e.operation.as_deref() == Some("Apply"));
        for entry in entries.iter_mut() {
            entry.fields_v1 = None;
        }
    }
}

/// A pod as the view needs it: its name and uid (memory: about 200 bytes a pod).
fn names_only(pod: &mut PartialObjectMeta<Pod>) {
    let meta = &mut pod.metadata;
    *meta = kube::api::ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        ..Default::default()
    };
}

async fn drive<K, S>(stream: S, mut seen: impl FnMut(&watcher::Event<K>) + Send)
where
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
{
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => seen(&event),
            Ok(None) => return,
            Err(e) => warn!(error = %e, "config service watch failed; retrying"),
        }
    }
}

fn done<K>(event: &watcher::Event<K>) -> bool {
    matches!(event, watcher::Event::InitDone)
}

fn namespace_of<K: Resource>(event: &watcher::Event<K>) -> Option<String> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
            o.meta().namespace.clone()
        }
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

fn deleted_in<K: Resource>(event: &watcher::Event<K>) -> Option<String> {
    match event {
        watcher::Event::Delete(o) => o.meta().namespace.clone(),
        _ => None,
    }
}

/// A namespace's change concerns the objects in it.
fn name_of<K: Resource>(event: &watcher::Event<K>) -> Option<String> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => o.meta().name.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_watches_of_its_namespace_only() {
        let changes = Changes::default();
        let mut a = changes.subscribe("a");
        let b = changes.subscribe("b");
        changes.announce("a");
        changes.announce("a");
        assert!(a.has_changed().unwrap(), "a's watch is woken");
        a.changed().await.unwrap();
        assert!(!a.has_changed().unwrap(), "two changes, one wake-up: the watch re-reads the state anyway");
        assert!(!b.has_changed().unwrap(), "b's watch sleeps on");
        drop(b);
        changes.announce("b");
        assert!(!changes.0.lock().unwrap().contains_key("b"), "a namespace nobody watches is forgotten");
        changes.announce("never-watched");
    }
}
