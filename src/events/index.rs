//! Which TenantConfigs a store change concerns: tenant → namespaces → objects,
//! and shared path → objects that include it.
//!
//! Kept current by the TenantConfig and Namespace watches (each watch event
//! updates it), so answering an event costs a few map lookups, not a scan.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::RwLock,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{ResourceExt, runtime::reflector::ObjectRef, runtime::watcher};

use crate::{
    api::{Guarded, identity, paths::strip_path},
    store::{Location, change::Target},
};

/// What the index keeps of one TenantConfig.
#[derive(Debug, Clone, PartialEq)]
struct ObjectInfo {
    config_type: String,
    includes: Vec<String>,
}

#[derive(Default)]
struct Maps {
    /// Namespace → its identity (only namespaces with a valid tenant label).
    identities: HashMap<String, identity::Identity>,
    /// Tenant → its namespaces.
    tenants: HashMap<String, BTreeSet<String>>,
    /// Namespace → TenantConfig name → what matters for routing events.
    objects: HashMap<String, BTreeMap<String, ObjectInfo>>,
    /// Included shared path → objects (namespace, name).
    includes: BTreeMap<String, BTreeSet<(String, String)>>,
    /// Objects and namespaces seen since a watch (re)started listing.
    relisting_objects: Option<HashSet<(String, String)>>,
    relisting_namespaces: Option<HashSet<String>>,
}

pub struct Index {
    tenant_label: String,
    environment_label: String,
    maps: RwLock<Maps>,
}

impl Index {
    pub fn new(tenant_label: &str, environment_label: &str) -> Self {
        Index {
            tenant_label: tenant_label.into(),
            environment_label: environment_label.into(),
            maps: RwLock::default(),
        }
    }

    /// Feeds one event of the TenantConfig watch.
    pub fn observe_tenant_config(&self, event: &watcher::Event<Guarded>) {
        let mut maps = self.maps.write().unwrap();
        match event {
            watcher::Event::Init => maps.relisting_objects = Some(HashSet::new()),
            watcher::Event::InitApply(obj) => {
                let key = object_key(obj);
                if let Some(seen) = maps.relisting_objects.as_mut() {
                    seen.insert(key);
                }
                maps.upsert_object(obj);
            }
            watcher::Event::Apply(obj) => maps.upsert_object(obj),
            watcher::Event::Delete(obj) => {
                let (ns, name) = object_key(obj);
                maps.remove_object(&ns, &name);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = maps.relisting_objects.take() {
                    let gone: Vec<(String, String)> = maps
                        .objects
                        .iter()
                        .flat_map(|(ns, objs)| objs.keys().map(move |name| (ns.clone(), name.clone())))
                        .filter(|key| !seen.contains(key))
                        .collect();
                    for (ns, name) in gone {
                        maps.remove_object(&ns, &name);
                    }
                }
            }
        }
    }

    /// Feeds one event of the Namespace watch.
    pub fn observe_namespace(&self, event: &watcher::Event<Namespace>) {
        let mut maps = self.maps.write().unwrap();
        match event {
            watcher::Event::Init => maps.relisting_namespaces = Some(HashSet::new()),
            watcher::Event::InitApply(ns) => {
                if let Some(seen) = maps.relisting_namespaces.as_mut() {
                    seen.insert(ns.name_any());
                }
                self.upsert_namespace(&mut maps, ns);
            }
            watcher::Event::Apply(ns) => self.upsert_namespace(&mut maps, ns),
            watcher::Event::Delete(ns) => maps.set_identity(&ns.name_any(), None),
            watcher::Event::InitDone => {
                if let Some(seen) = maps.relisting_namespaces.take() {
                    let gone: Vec<String> = maps.identities.keys().filter(|ns| !seen.contains(*ns)).cloned().collect();
                    for ns in gone {
                        maps.set_identity(&ns, None);
                    }
                }
            }
        }
    }

    fn upsert_namespace(&self, maps: &mut Maps, ns: &Namespace) {
        let name = ns.name_any();
        let identity =
            identity::resolve(&name, ns.metadata.labels.as_ref(), &self.tenant_label, &self.environment_label).ok();
        maps.set_identity(&name, identity);
    }

    /// The TenantConfigs a change at `target` can alter.
    pub fn objects_for(&self, target: &Target) -> Vec<ObjectRef<Guarded>> {
        match target {
            Target::Tenant { location, .. } => self.objects_at(location),
            Target::Shared { name, .. } => self.objects_including(name),
        }
    }

    /// The TenantConfigs whose tenant data is at `location`.
    pub fn objects_at(&self, location: &Location) -> Vec<ObjectRef<Guarded>> {
        let maps = self.maps.read().unwrap();
        let mut found = BTreeSet::new();
        for ns in maps.tenants.get(&location.tenant).into_iter().flatten() {
            if maps.identities.get(ns).map(|id| &id.environment) != Some(&location.environment) {
                continue;
            }
            for (name, info) in maps.objects.get(ns).into_iter().flatten() {
                if info.config_type == location.config_type {
                    found.insert((ns.clone(), name.clone()));
                }
            }
        }
        refs(found)
    }

    /// The TenantConfigs that include a shared path above parameter `name`.
    pub fn objects_including(&self, name: &str) -> Vec<ObjectRef<Guarded>> {
        let maps = self.maps.read().unwrap();
        let mut found = BTreeSet::new();
        for (path, objects) in &maps.includes {
            if strip_path(name, path).is_some() {
                found.extend(objects.iter().cloned());
            }
        }
        refs(found)
    }

    /// The TenantConfigs of one namespace.
    pub fn objects_in(&self, namespace: &str) -> Vec<ObjectRef<Guarded>> {
        let maps = self.maps.read().unwrap();
        let names = maps.objects.get(namespace).into_iter().flat_map(|objects| objects.keys());
        names.map(|name| ObjectRef::new(name).within(namespace)).collect()
    }

    /// Number of TenantConfigs indexed (for tests and metrics).
    pub fn len(&self) -> usize {
        self.maps.read().unwrap().objects.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn refs(found: BTreeSet<(String, String)>) -> Vec<ObjectRef<Guarded>> {
    found.into_iter().map(|(ns, name)| ObjectRef::new(&name).within(&ns)).collect()
}

fn object_key(obj: &Guarded) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

impl Maps {
    fn upsert_object(&mut self, obj: &Guarded) {
        let (ns, name) = object_key(obj);
        // An object that does not deserialize has no configType we can trust: it
        // is not indexed (the resync and its own watch events still reach it).
        let Ok(tc) = &obj.0 else {
            self.remove_object(&ns, &name);
            return;
        };
        let info = ObjectInfo {
            config_type: tc.config_type().to_string(),
            includes: tc.spec.include.iter().map(|i| i.parameter_path.clone()).collect(),
        };
        if self.objects.get(&ns).and_then(|objs| objs.get(&name)) == Some(&info) {
            return;
        }
        self.remove_object(&ns, &name);
        for path in &info.includes {
            self.includes.entry(path.clone()).or_default().insert((ns.clone(), name.clone()));
        }
        self.objects.entry(ns).or_default().insert(name, info);
    }

    fn remove_object(&mut self, ns: &str, name: &str) {
        let Some(objs) = self.objects.get_mut(ns) else { return };
        let Some(info) = objs.remove(name) else { return };
        if objs.is_empty() {
            self.objects.remove(ns);
        }
        for path in info.includes {
            if let Some(set) = self.includes.get_mut(&path) {
                set.remove(&(ns.to_string(), name.to_string()));
                if set.is_empty() {
                    self.includes.remove(&path);
                }
            }
        }
    }

    fn set_identity(&mut self, ns: &str, identity: Option<identity::Identity>) {
        if let Some(old) = self.identities.remove(ns)
            && let Some(namespaces) = self.tenants.get_mut(&old.tenant)
        {
            namespaces.remove(ns);
            if namespaces.is_empty() {
                self.tenants.remove(&old.tenant);
            }
        }
        if let Some(identity) = identity {
            self.tenants.entry(identity.tenant.clone()).or_default().insert(ns.to_string());
            self.identities.insert(ns.to_string(), identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TenantConfig;
    use kube::core::DeserializeGuard;

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()}
        }))
        .unwrap()
    }

    fn tenant_config(ns: &str, name: &str, config_type: &str, includes: &[&str]) -> Guarded {
        let tc: TenantConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"configType": config_type,
                     "include": includes.iter().map(|p| serde_json::json!({"parameterPath": p})).collect::<Vec<_>>()}
        }))
        .unwrap();
        DeserializeGuard(Ok(tc))
    }

    fn tenant(t: &str, env: Option<&str>, ct: &str) -> Target {
        let location = Location { tenant: t.into(), environment: env.map(Into::into), config_type: ct.into() };
        Target::Tenant { store: "s".into(), location }
    }

    fn names(refs: Vec<ObjectRef<Guarded>>) -> Vec<String> {
        refs.into_iter().map(|r| format!("{}/{}", r.namespace.unwrap(), r.name)).collect()
    }

    #[test]
    fn tenant_and_shared_lookups_follow_the_watches() {
        let index = Index::new(crate::api::names::TENANT_LABEL, crate::api::names::ENVIRONMENT_LABEL);
        let t = crate::api::names::TENANT_LABEL;
        let e = crate::api::names::ENVIRONMENT_LABEL;
        index.observe_namespace(&watcher::Event::Apply(namespace("acme-prod", &[(t, "acme"), (e, "prod")])));
        index.observe_namespace(&watcher::Event::Apply(namespace("acme-dev", &[(t, "acme"), (e, "dev")])));
        index.observe_namespace(&watcher::Event::Apply(namespace("acme", &[(t, "acme")])));
        index.observe_namespace(&watcher::Event::Apply(namespace("unlabelled", &[])));
        for (ns, name, ct, inc) in [
            ("acme-prod", "payments", "payments", vec!["/shared/prod"]),
            ("acme-prod", "search", "search", vec![]),
            ("acme-dev", "payments", "payments", vec!["/shared/dev"]),
            ("acme", "payments", "payments", vec!["/shared"]),
            ("unlabelled", "payments", "payments", vec!["/shared/prod"]),
        ] {
            index.observe_tenant_config(&watcher::Event::Apply(tenant_config(ns, name, ct, &inc)));
        }
        assert_eq!(index.len(), 5);
        assert_eq!(names(index.objects_for(&tenant("acme", Some("prod"), "payments"))), ["acme-prod/payments"]);
        assert_eq!(names(index.objects_for(&tenant("acme", None, "payments"))), ["acme/payments"]);
        assert_eq!(names(index.objects_for(&tenant("globex", None, "payments"))), Vec::<String>::new());
        let shared = Target::Shared { store: "s".into(), name: "/shared/prod/timeout".into() };
        assert_eq!(names(index.objects_for(&shared)), ["acme/payments", "acme-prod/payments", "unlabelled/payments"]);

        // Relabelling a namespace moves its objects to the other tenant.
        index.observe_namespace(&watcher::Event::Apply(namespace("acme-prod", &[(t, "globex"), (e, "prod")])));
        assert_eq!(names(index.objects_for(&tenant("acme", Some("prod"), "payments"))), Vec::<String>::new());
        assert_eq!(names(index.objects_for(&tenant("globex", Some("prod"), "payments"))), ["acme-prod/payments"]);

        // A changed include list replaces the old one; a deletion removes it.
        index.observe_tenant_config(&watcher::Event::Apply(tenant_config("acme", "payments", "payments", &[])));
        index.observe_tenant_config(&watcher::Event::Delete(tenant_config("unlabelled", "payments", "payments", &[])));
        assert_eq!(names(index.objects_for(&shared)), ["acme-prod/payments"]);

        // A relist drops what it did not see again.
        index.observe_tenant_config(&watcher::Event::Init);
        index.observe_tenant_config(&watcher::Event::InitApply(tenant_config("acme-dev", "payments", "payments", &[])));
        index.observe_tenant_config(&watcher::Event::InitDone);
        assert_eq!(index.len(), 1);
        assert_eq!(names(index.objects_for(&shared)), Vec::<String>::new());
        index.observe_namespace(&watcher::Event::Init);
        index.observe_namespace(&watcher::Event::InitDone);
        assert_eq!(names(index.objects_for(&tenant("acme", Some("dev"), "payments"))), Vec::<String>::new());
    }

    #[test]
    fn objects_that_do_not_deserialize_are_not_indexed() {
        let index = Index::new("t", "e");
        index.observe_tenant_config(&watcher::Event::Apply(tenant_config("a", "x", "payments", &["/s"])));
        let broken: Guarded = serde_json::from_value(serde_json::json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
            "metadata": {"name": "x", "namespace": "a"}, "spec": {"entries": "nope"}
        }))
        .unwrap();
        assert!(broken.0.is_err());
        index.observe_tenant_config(&watcher::Event::Apply(broken));
        assert!(index.is_empty());
    }
}
