//! What the config service answers from: its own watches of the projected
//! ConfigMaps (this controller's, by label), of TenantConfigs (slimmed to what
//! reads need: no entries, no includes) and of namespaces' labels. Its own so
//! that every replica serves, the standby too: reads need no leadership.
//! Every change is announced by namespace, for the open watches there.

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client, Resource,
    api::PartialObjectMeta,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::{broadcast, watch};
use tracing::warn;

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
    /// The namespace of each change.
    pub changes: broadcast::Sender<String>,
    /// True once all three watches have listed.
    pub ready: watch::Receiver<bool>,
}

/// Open watches that fall this far behind re-check everything (a lag is not a loss).
const CHANGES_BUFFER: usize = 4096;

impl View {
    /// The view and the future that keeps it current (run it as long as the service serves).
    pub fn start(client: &Client) -> (View, impl std::future::Future<Output = ()> + Send + 'static) {
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let (listed_tx, ready) = watch::channel(false);
        let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
        let (config_maps, cm_writer) = reflector::store();
        let cm_stream =
            watcher(Api::<ConfigMap>::all(client.clone()), ours).modify(|cm| cm.metadata.managed_fields = None);
        let (tenant_configs, tc_writer) = reflector::store();
        let tc_stream = watcher(Api::<Guarded>::all(client.clone()), watcher::Config::default()).modify(slim);
        let (namespaces, ns_writer) = reflector::store();
        let ns_stream = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default());
        let view = View { config_maps, tenant_configs, namespaces, changes: changes.clone(), ready };
        let listed = std::sync::Arc::new(std::sync::Mutex::new([false; 3]));
        let announce = move |which: usize, namespace: Option<String>, init_done: bool| {
            if let Some(ns) = namespace {
                let _ = changes.send(ns);
            }
            if init_done {
                let mut listed = listed.lock().unwrap();
                listed[which] = true;
                if listed.iter().all(|l| *l) {
                    let _ = listed_tx.send(true);
                }
            }
        };
        let (a1, a2, a3) = (announce.clone(), announce.clone(), announce);
        let cms = drive(reflector::reflector(cm_writer, cm_stream), move |e| a1(0, namespace_of(e), done(e)));
        let tcs = drive(reflector::reflector(tc_writer, tc_stream), move |e| a2(1, namespace_of(e), done(e)));
        let nss = drive(reflector::reflector(ns_writer, ns_stream), move |e| a3(2, name_of(e), done(e)));
        let run = async move {
            tokio::join!(cms, tcs, nss);
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

/// A namespace's change concerns the objects in it.
fn name_of<K: Resource>(event: &watcher::Event<K>) -> Option<String> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => o.meta().name.clone(),
        _ => None,
    }
}
