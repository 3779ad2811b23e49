//! The reconcile's `render` step: what a TenantConfig's ConfigMap (and Secret)
//! must contain (DESIGN.md §5), and the objects to apply. Pure.
//!
//! Layers, lowest precedence first: shared includes in listed order, then the
//! tenant's Parameter Store data, then its DynamoDB data; later layers win.
//! Keys that are not valid ConfigMap keys are skipped and named; secure values go
//! only to the Secret, and nowhere when no Secret is configured.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use sha2::{Digest, Sha256};

pub use crate::api::is_valid_config_map_key;
use crate::{
    api::names::{DIGEST_ANNOTATION, FIELD_MANAGER, MANAGED_BY_LABEL, TENANT_LABEL},
    store::Value,
};

/// Kubernetes refuses objects over 1 MiB; we refuse earlier, never truncate.
pub const MAX_OBJECT_DATA_BYTES: usize = 1024 * 1024;

/// Where a layer comes from; the order of this enum is the precedence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The spec's own entries, rendered alone before any store is read (to
    /// refuse a spec whose entries cannot fit whatever the stores hold).
    Spec,
    /// `spec.include[index]`.
    Shared { index: usize },
    /// The tenant's data in a store of the given precedence (its backend's,
    /// see `Backend::precedence`) and name.
    Store { precedence: u8, name: String },
}

/// One layer of data. Shared: a cached include is one map for every object
/// that includes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub source: Source,
    pub entries: Arc<BTreeMap<String, Value>>,
}

/// The rendered projection: the data of the ConfigMap and Secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendered {
    pub config_map: BTreeMap<String, String>,
    /// Secure values; empty unless a Secret is configured.
    pub secret: BTreeMap<String, String>,
    /// Keys skipped because they are not valid ConfigMap keys.
    pub skipped_keys: Vec<String>,
    /// Secure keys not projected because no Secret is configured.
    pub withheld_secure_keys: Vec<String>,
    /// `sha256:<hex>` over everything projected.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the projected {object} would hold {size} bytes of data; Kubernetes objects are limited to 1 MiB")]
pub struct ProjectionTooLarge {
    pub object: &'static str,
    pub size: usize,
}

/// Merges the layers (in precedence order, whatever order they come in).
pub fn render(mut layers: Vec<Layer>, with_secret: bool) -> Result<Rendered, ProjectionTooLarge> {
    layers.sort_by(|a, b| a.source.cmp(&b.source));
    let mut merged: BTreeMap<&str, &Value> = BTreeMap::new();
    let mut skipped = Vec::new();
    for layer in &layers {
        for (key, value) in layer.entries.iter() {
            if is_valid_config_map_key(key) {
                merged.insert(key, value);
            } else if !skipped.contains(key) {
                skipped.push(key.clone());
            }
        }
    }
    let mut rendered = Rendered { skipped_keys: skipped, ..Default::default() };
    for (key, value) in merged {
        match (value.secure, with_secret) {
            (false, _) => {
                rendered.config_map.insert(key.to_string(), value.value.clone());
            }
            (true, true) => {
                rendered.secret.insert(key.to_string(), value.value.clone());
            }
            (true, false) => rendered.withheld_secure_keys.push(key.to_string()),
        }
    }
    for (object, data) in [("ConfigMap", &rendered.config_map), ("Secret", &rendered.secret)] {
        let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_OBJECT_DATA_BYTES {
            return Err(ProjectionTooLarge { object, size });
        }
    }
    rendered.digest = digest(&rendered.config_map, &rendered.secret);
    Ok(rendered)
}

impl Rendered {
    /// Keys projected into the ConfigMap and the Secret.
    pub fn keys(&self) -> i32 {
        (self.config_map.len() + self.secret.len()) as i32
    }

    /// The Projected condition's message: what was left out and why, else the
    /// count. `secret_named`: the spec names a Secret (secure projection may
    /// still be off).
    pub fn message(&self, secret_named: bool) -> String {
        let mut notes = Vec::new();
        if !self.skipped_keys.is_empty() {
            notes.push(format!("skipped keys that are not valid ConfigMap keys: {}", self.skipped_keys.join(", ")));
        }
        if !self.withheld_secure_keys.is_empty() {
            notes.push(format!(
                "secure keys not projected ({}): {}",
                if secret_named { "secure projection is disabled" } else { "no projection.secretName" },
                self.withheld_secure_keys.join(", ")
            ));
        }
        if notes.is_empty() { format!("{} key(s) projected", self.keys()) } else { notes.join("; ") }
    }
}

/// Length-prefixed, so no choice of keys and values can collide.
fn digest(config_map: &BTreeMap<String, String>, secret: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (part, data) in [(b"configmap", config_map), (b"secret\0\0\0", secret)] {
        hasher.update(part);
        for (k, v) in data {
            hasher.update((k.len() as u64).to_le_bytes());
            hasher.update(k.as_bytes());
            hasher.update((v.len() as u64).to_le_bytes());
            hasher.update(v.as_bytes());
        }
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn metadata(name: &str, namespace: &str, tenant: &str, digest: &str, owner: OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
            (TENANT_LABEL.to_string(), tenant.to_string()),
        ])),
        annotations: Some(BTreeMap::from([(DIGEST_ANNOTATION.to_string(), digest.to_string())])),
        owner_references: Some(vec![owner]),
        ..Default::default()
    }
}

/// The ConfigMap to server-side apply.
pub fn config_map(name: &str, namespace: &str, tenant: &str, p: &Rendered, owner: OwnerReference) -> ConfigMap {
    ConfigMap {
        metadata: metadata(name, namespace, tenant, &p.digest, owner),
        data: Some(p.config_map.clone()),
        ..Default::default()
    }
}

/// The Secret to server-side apply, for secure values.
pub fn secret(name: &str, namespace: &str, tenant: &str, p: &Rendered, owner: OwnerReference) -> Secret {
    Secret {
        metadata: metadata(name, namespace, tenant, &p.digest, owner),
        data: Some(p.secret.iter().map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))).collect()),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// True when an existing object may be written by us: absent, or labelled as
/// ours and controlled by this TenantConfig. Anything else is someone else's.
pub fn owned_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    let ours = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == FIELD_MANAGER);
    let controlled = meta.owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == owner_uid);
    ours && controlled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(source: Source, pairs: &[(&str, &str, bool)]) -> Layer {
        Layer {
            source,
            entries: pairs
                .iter()
                .map(|(k, v, s)| (k.to_string(), Value { value: v.to_string(), secure: *s }))
                .collect::<BTreeMap<_, _>>()
                .into(),
        }
    }

    fn ddb() -> Source {
        Source::Store { precedence: 2, name: "tenant-dynamodb".into() }
    }
    fn ssm() -> Source {
        Source::Store { precedence: 1, name: "shared-ssm".into() }
    }

    #[test]
    fn later_layers_win_whatever_order_they_arrive_in() {
        let layers = vec![
            layer(ddb(), &[("retry-limit", "7", false)]),
            layer(ssm(), &[("retry-limit", "5", false), ("api-endpoint", "https://x", false)]),
            layer(Source::Shared { index: 1 }, &[("region", "eu", false), ("retry-limit", "3", false)]),
            layer(Source::Shared { index: 0 }, &[("region", "us", false), ("currency", "USD", false)]),
        ];
        let p = render(layers, false).unwrap();
        assert_eq!(
            p.config_map,
            BTreeMap::from([
                ("api-endpoint".to_string(), "https://x".to_string()),
                ("currency".to_string(), "USD".to_string()),
                ("region".to_string(), "eu".to_string()), // include 1 over include 0
                ("retry-limit".to_string(), "7".to_string()), // DynamoDB over SSM over shared
            ])
        );
    }

    #[test]
    fn secure_values_only_reach_the_secret() {
        let layers = vec![layer(ssm(), &[("db-password", "s3cret", true), ("host", "db", false)])];
        let with = render(layers.clone(), true).unwrap();
        assert_eq!(with.secret.get("db-password").map(String::as_str), Some("s3cret"));
        assert!(!with.config_map.contains_key("db-password"));
        let without = render(layers, false).unwrap();
        assert!(without.secret.is_empty() && !without.config_map.contains_key("db-password"));
        assert_eq!(without.withheld_secure_keys, ["db-password"]);
        assert_ne!(with.digest, without.digest);
    }

    #[test]
    fn a_secure_value_in_a_higher_layer_hides_the_plain_one() {
        let layers = vec![
            layer(Source::Shared { index: 0 }, &[("token", "plain", false)]),
            layer(ssm(), &[("token", "s", true)]),
        ];
        let p = render(layers, true).unwrap();
        assert!(!p.config_map.contains_key("token"));
        assert_eq!(p.secret["token"], "s");
    }

    #[test]
    fn invalid_keys_are_skipped_and_named() {
        // "..x" passes the store's own rules but Kubernetes refuses it as a
        // ConfigMap key: one such key written by another system must not
        // break the projection of everything else.
        let layers = vec![layer(
            ddb(),
            &[("ok", "1", false), ("has space", "2", false), ("ü", "3", false), ("..x", "4", false)],
        )];
        let p = render(layers, false).unwrap();
        assert_eq!(p.config_map.len(), 1);
        assert_eq!(p.skipped_keys, ["..x", "has space", "ü"]);
        assert!(is_valid_config_map_key(&"k".repeat(253)) && !is_valid_config_map_key(&"k".repeat(254)));
    }

    #[test]
    fn over_one_mib_is_refused_not_truncated() {
        let big = "v".repeat(8192);
        let entries: Vec<(String, String)> = (0..130).map(|i| (format!("k{i}"), big.clone())).collect();
        let layers = vec![Layer {
            source: ddb(),
            entries: Arc::new(entries.into_iter().map(|(k, v)| (k, Value { value: v, secure: false })).collect()),
        }];
        let err = render(layers, false).unwrap_err();
        assert_eq!(err.object, "ConfigMap");
        assert!(err.size > MAX_OBJECT_DATA_BYTES);
    }

    #[test]
    fn digest_is_stable_and_unambiguous() {
        let a = render(vec![layer(ddb(), &[("ab", "c", false)])], false).unwrap();
        let b = render(vec![layer(ddb(), &[("a", "bc", false)])], false).unwrap();
        let a2 = render(vec![layer(ddb(), &[("ab", "c", false)])], false).unwrap();
        assert_eq!(a.digest, a2.digest);
        assert_ne!(a.digest, b.digest);
        assert!(a.digest.starts_with("sha256:") && a.digest.len() == 7 + 64);
    }

    #[test]
    fn rendered_objects_carry_labels_annotation_and_owner() {
        let p = render(vec![layer(ddb(), &[("k", "v", false), ("pw", "s", true)])], true).unwrap();
        let owner = OwnerReference {
            api_version: "tenantconfig.io/v1alpha1".into(),
            kind: "TenantConfig".into(),
            name: "payments".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let cm = config_map("payments-config", "acme-prod", "acme", &p, owner.clone());
        let labels = cm.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], FIELD_MANAGER);
        assert_eq!(labels[TENANT_LABEL], "acme");
        assert_eq!(cm.metadata.annotations.as_ref().unwrap()[DIGEST_ANNOTATION], p.digest);
        assert!(owned_by(&cm.metadata, "uid-1"));
        assert!(!owned_by(&cm.metadata, "uid-2"), "another TenantConfig's object is not ours");
        assert!(!owned_by(&ObjectMeta::default(), "uid-1"), "a foreign object is not ours");
        let s = secret("payments-secrets", "acme-prod", "acme", &p, owner);
        assert_eq!(s.data.unwrap()["pw"].0, b"s");
        assert!(!cm.data.unwrap().contains_key("pw"));
    }
}
