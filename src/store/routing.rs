//! Which ConfigStore an entry goes to (DESIGN.md §2). Pure.
//!
//! An entry matches a store when one of its tags (its own, else the object's
//! `defaultTags`) is among the store's `tags`, or its key starts with one of the
//! store's `keyPrefixes`. Among matches the highest `priority` wins, then the
//! lexically smallest name. No match: the single `default` store.

use std::collections::BTreeMap;

use super::StoreRef;
use crate::api::{Entry, TenantConfigSpec, paths};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("no ConfigStore serves key {key:?} (tags [{}]) and no store is marked default", tags.join(", "))]
    NoStoreForTags { key: String, tags: Vec<String> },
    #[error("key {key:?} matches no store's tags and several stores are marked default ({}); mark at most one", stores.join(", "))]
    SeveralDefaults { key: String, stores: Vec<String> },
}

/// Why an include was refused (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("include {path:?} is not under any store's sharedPaths; tenants may include only shared paths")]
pub struct IncludeNotAllowed {
    pub path: String,
}

/// The store that serves shared path `path`: the first (by name) whose
/// `sharedPaths` contains it on a segment boundary. Paths with empty, `.` or
/// `..` segments are never allowed, whatever the CRD let through.
pub fn shared_store_for<'a>(path: &str, stores: &[StoreRef<'a>]) -> Result<&'a str, IncludeNotAllowed> {
    let refused = || IncludeNotAllowed { path: path.into() };
    paths::segments(path).ok_or_else(refused)?;
    let mut serving: Vec<&str> = stores
        .iter()
        .filter(|s| s.spec.shared_paths().iter().any(|shared| paths::is_at_or_under(path, shared)))
        .map(|s| s.name)
        .collect();
    serving.sort_unstable();
    serving.first().copied().ok_or_else(refused)
}

/// The tags an entry routes by.
pub fn effective_tags<'a>(entry: &'a Entry, spec: &'a TenantConfigSpec) -> &'a [String] {
    if entry.tags.is_empty() { &spec.default_tags } else { &entry.tags }
}

/// The store for one key with the given tags.
pub fn route<'a>(key: &str, tags: &[String], stores: &[StoreRef<'a>]) -> Result<&'a str, RoutingError> {
    // Stores without exactly one backend are refused by the CRD; never route to one.
    let usable = || stores.iter().filter(|s| s.spec.backend().is_some());
    let matches = |s: &&StoreRef<'a>| {
        s.spec.tags.iter().any(|t| tags.contains(t)) || s.spec.key_prefixes.iter().any(|p| key.starts_with(p.as_str()))
    };
    if let Some(best) =
        usable().filter(matches).min_by(|a, b| b.spec.priority.cmp(&a.spec.priority).then(a.name.cmp(b.name)))
    {
        return Ok(best.name);
    }
    let mut defaults: Vec<&str> = usable().filter(|s| s.spec.default).map(|s| s.name).collect();
    match defaults.len() {
        1 => Ok(defaults[0]),
        0 => Err(RoutingError::NoStoreForTags { key: key.into(), tags: tags.to_vec() }),
        _ => {
            defaults.sort_unstable();
            Err(RoutingError::SeveralDefaults {
                key: key.into(),
                stores: defaults.into_iter().map(String::from).collect(),
            })
        }
    }
}

/// Every entry of `spec` grouped by the store it routes to (store name → entries
/// in spec order). Fails on the first entry that cannot be routed.
pub fn route_entries<'s>(
    spec: &'s TenantConfigSpec,
    stores: &[StoreRef<'_>],
) -> Result<BTreeMap<String, Vec<&'s Entry>>, RoutingError> {
    let mut routed: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    for entry in &spec.entries {
        let store = route(&entry.key, effective_tags(entry, spec), stores)?;
        routed.entry(store.to_string()).or_default().push(entry);
    }
    Ok(routed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigStoreSpec, DynamoDbStore, ParameterStoreStore};

    fn store(tags: &[&str], prefixes: &[&str], default: bool, priority: i32) -> ConfigStoreSpec {
        ConfigStoreSpec {
            tags: tags.iter().map(|s| s.to_string()).collect(),
            key_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            default,
            priority,
            dynamodb: Some(DynamoDbStore::default()),
            parameter_store: None,
            quota: None,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn routes_by_tag_prefix_priority_name_and_default() {
        let ddb = store(&["tenant", "high-frequency"], &["tenant_config_"], true, 0);
        let ssm = store(&["shared", "static"], &[], false, 0);
        let ssm_hi = store(&["static"], &[], false, 10);
        let a_static = store(&["static"], &[], false, 0);
        let broken = ConfigStoreSpec { tags: strings(&["broken"]), ..Default::default() };
        let design = [StoreRef { name: "tenant-dynamodb", spec: &ddb }, StoreRef { name: "shared-ssm", spec: &ssm }];
        let contested = [
            StoreRef { name: "shared-ssm", spec: &ssm },
            StoreRef { name: "ssm-priority", spec: &ssm_hi },
            StoreRef { name: "a-static", spec: &a_static },
        ];
        let tie = [StoreRef { name: "shared-ssm", spec: &ssm }, StoreRef { name: "a-static", spec: &a_static }];
        let with_broken = [StoreRef { name: "broken", spec: &broken }, StoreRef { name: "shared-ssm", spec: &ssm }];

        type Case<'a> = (&'a str, &'a [&'a str], &'a [StoreRef<'a>], Result<&'a str, RoutingError>);
        let table: &[Case] = &[
            ("provider", &["tenant"], &design, Ok("tenant-dynamodb")),
            ("api-endpoint", &["static"], &design, Ok("shared-ssm")),
            ("x", &["high-frequency", "shared"], &design, Ok("shared-ssm")), // both match, equal priority: name
            ("tenant_config_flag", &[], &design, Ok("tenant-dynamodb")),     // by prefix
            ("untagged", &[], &design, Ok("tenant-dynamodb")),               // default store
            ("unknown", &["nope"], &design, Ok("tenant-dynamodb")),          // default store
            ("k", &["static"], &contested, Ok("ssm-priority")),              // priority first
            ("k", &["static"], &tie, Ok("a-static")),                        // then name
            ("k", &["nope"], &tie, Err(RoutingError::NoStoreForTags { key: "k".into(), tags: strings(&["nope"]) })),
            (
                "k",
                &["broken"],
                &with_broken,
                Err(RoutingError::NoStoreForTags { key: "k".into(), tags: strings(&["broken"]) }),
            ),
        ];
        for (key, tags, stores, want) in table {
            assert_eq!(&route(key, &strings(tags), stores), want, "key {key} tags {tags:?}");
        }
    }

    #[test]
    fn includes_must_lie_under_a_shared_path() {
        let ssm = ConfigStoreSpec {
            parameter_store: Some(ParameterStoreStore {
                path_prefix: "/tenant-config".into(),
                shared_paths: strings(&["/tenant-config-shared"]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ddb = store(&["tenant"], &[], true, 0);
        let stores = [StoreRef { name: "ddb", spec: &ddb }, StoreRef { name: "shared-ssm", spec: &ssm }];
        for ok in ["/tenant-config-shared", "/tenant-config-shared/prod/payments"] {
            assert_eq!(shared_store_for(ok, &stores), Ok("shared-ssm"), "{ok}");
        }
        for bad in [
            "/tenant-config/globex/payments", // another tenant's data
            "/tenant-config-shared-evil/x",   // prefix but not on a segment boundary
            "/tenant-config-shared/../tenant-config/globex",
            "/tenant-config-shared//x",
            "tenant-config-shared/x",
            "/",
        ] {
            assert_eq!(shared_store_for(bad, &stores), Err(IncludeNotAllowed { path: bad.into() }), "{bad}");
        }
    }

    #[test]
    fn several_defaults_are_an_error_naming_them() {
        let a = store(&[], &[], true, 0);
        let b = store(&[], &[], true, 5);
        let stores = [StoreRef { name: "zeta", spec: &a }, StoreRef { name: "alpha", spec: &b }];
        let err = route("k", &[], &stores).unwrap_err();
        assert_eq!(err, RoutingError::SeveralDefaults { key: "k".into(), stores: strings(&["alpha", "zeta"]) });
        assert!(err.to_string().contains("alpha, zeta"));
    }

    #[test]
    fn no_store_error_names_the_tags() {
        let err = route("db-password", &strings(&["vault", "pci"]), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no ConfigStore serves key \"db-password\" (tags [vault, pci]) and no store is marked default"
        );
    }

    #[test]
    fn entries_use_their_own_tags_else_default_tags() {
        let ddb = store(&["tenant"], &[], false, 0);
        let ssm = ConfigStoreSpec {
            tags: strings(&["static"]),
            parameter_store: Some(ParameterStoreStore::default()),
            ..Default::default()
        };
        let stores = [StoreRef { name: "ddb", spec: &ddb }, StoreRef { name: "ssm", spec: &ssm }];
        let spec: TenantConfigSpec = serde_json::from_value(serde_json::json!({
            "defaultTags": ["tenant"],
            "entries": [
                { "key": "a", "value": "1" },
                { "key": "b", "value": "2", "tags": ["static"] },
                { "key": "c", "value": "3" }
            ]
        }))
        .unwrap();
        let routed = route_entries(&spec, &stores).unwrap();
        let keys = |s: &str| routed[s].iter().map(|e| e.key.as_str()).collect::<Vec<_>>();
        assert_eq!(keys("ddb"), ["a", "c"]);
        assert_eq!(keys("ssm"), ["b"]);
    }
}
