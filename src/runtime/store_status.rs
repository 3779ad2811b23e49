//! ConfigStore status: `Ready=True` (reason `Valid`) or `Ready=False` (reason
//! `Overlap`, naming the stores it overlaps: [`crate::store::overlap`]), kept
//! current by the active replica whenever a ConfigStore changes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::reflector,
};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    api::{
        ConfigStore,
        conditions::{READY, set_condition},
        names::FIELD_MANAGER,
    },
    store::{StoreRef, overlap},
};

pub const VALID: &str = "Valid";
pub const OVERLAP: &str = "Overlap";

/// Runs `controller`, keeping the stores' statuses current until it ends.
pub async fn alongside(
    controller: impl Future<Output = ()>,
    (client, stores, changed): (Client, reflector::Store<ConfigStore>, Arc<Notify>),
) {
    tokio::select! {
        _ = controller => {}
        _ = keep_current(client, stores, changed) => {}
    }
}

/// Rewrites every store's status that differs from what the set of stores
/// says, each time `changed` is notified; retries failed writes.
async fn keep_current(client: Client, stores: reflector::Store<ConfigStore>, changed: Arc<Notify>) {
    loop {
        changed.notified().await;
        // A burst of changes (one `kubectl apply` of many stores) is one pass.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = write_changed(&client, &stores.state()).await {
            warn!(error = %e, "ConfigStore status not written; retrying in 5 s");
            tokio::time::sleep(Duration::from_secs(5)).await;
            changed.notify_one();
        }
    }
}

async fn write_changed(client: &Client, stores: &[Arc<ConfigStore>]) -> Result<(), kube::Error> {
    let overlaps = overlap::overlapping(&StoreRef::all(stores));
    let api = Api::<ConfigStore>::all(client.clone());
    for (store, status) in changed_statuses(stores, &overlaps, Time(Timestamp::now())) {
        if let Some(message) = overlaps.get(&store) {
            info!(store, message, "ConfigStore overlaps another: nothing routes to it");
        }
        let patch = json!({ "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "status": status });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&store, &params, &Patch::Apply(&patch)).await {
            Ok(_) => {}
            // Deleted since the cache saw it.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The statuses to write: those whose Ready condition or observed generation
/// differ from what the overlaps say. Pure.
fn changed_statuses(
    stores: &[Arc<ConfigStore>],
    overlaps: &BTreeMap<String, String>,
    now: Time,
) -> Vec<(String, crate::api::config_store::ConfigStoreStatus)> {
    let mut changed = Vec::new();
    for store in stores {
        let name = store.name_any();
        let (ready, reason, message) = match overlaps.get(&name) {
            Some(why) => (false, OVERLAP, why.as_str()),
            None => (true, VALID, "its table or paths overlap no other store's"),
        };
        let mut status = store.status.clone().unwrap_or_default();
        let generation = store.metadata.generation;
        let condition_changed =
            set_condition(&mut status.conditions, READY, ready, reason, message, generation, now.clone());
        if condition_changed || status.observed_generation != generation {
            status.observed_generation = generation;
            changed.push((name, status));
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConfigStoreSpec;

    fn store(name: &str, generation: i64, spec: serde_json::Value) -> Arc<ConfigStore> {
        let spec: ConfigStoreSpec = serde_json::from_value(spec).unwrap();
        let mut store = ConfigStore::new(name, spec);
        store.metadata.generation = Some(generation);
        Arc::new(store)
    }

    #[test]
    fn statuses_are_written_once_per_change() {
        let now = Time(Timestamp::now());
        let a = store("a", 1, json!({ "dynamodb": { "tableName": "t1" } }));
        let b = store("b", 1, json!({ "dynamodb": { "tableName": "t1" } }));
        let stores = vec![a, b];
        let overlaps = overlap::overlapping(&StoreRef::all(&stores));
        let first = changed_statuses(&stores, &overlaps, now.clone());
        assert_eq!(first.len(), 2);
        let ready = &first[0].1.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", OVERLAP));
        assert!(ready.message.contains("ConfigStore b"), "{}", ready.message);
        // Once written, nothing changes until a store does.
        let written: Vec<Arc<ConfigStore>> = stores
            .iter()
            .zip(&first)
            .map(|(s, (_, status))| Arc::new(ConfigStore { status: Some(status.clone()), ..(**s).clone() }))
            .collect();
        assert!(changed_statuses(&written, &overlaps, now.clone()).is_empty());
        // b moves to its own table: both become Valid.
        let moved = store("b", 2, json!({ "dynamodb": { "tableName": "t2" } }));
        let stores = vec![written[0].clone(), moved];
        let overlaps = overlap::overlapping(&StoreRef::all(&stores));
        let next = changed_statuses(&stores, &overlaps, now);
        assert_eq!(
            next.iter().map(|(n, s)| (n.as_str(), s.conditions[0].reason.as_str())).collect::<Vec<_>>(),
            [("a", VALID), ("b", VALID)]
        );
    }
}
