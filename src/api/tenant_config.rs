//! `TenantConfig`: a tenant team's configuration, pushed to the stores by tag and
//! projected back into a ConfigMap in the same namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use super::{
    CONFIG_MAP_KEY_RULE, KEY_MAX_LEN, KEY_PATTERN, NO_DOT_SEGMENTS_RULE, PARAMETER_PATH_MAX_LEN,
    PARAMETER_PATH_PATTERN, TAG_MAX_LEN, TAG_PATTERN,
    packed_status::{self, PackedStatus},
};

/// At most this many entries per object: keeps one DynamoDB item well under its
/// 400 KB limit for typical values and bounds CEL cost.
pub const MAX_ENTRIES: u32 = 256;
/// Largest value a store accepts (SSM Advanced tier: 8 KiB).
pub const MAX_VALUE_BYTES: u32 = 8192;
/// Most bytes of keys and values one object's entries may hold together. The
/// controller caches every object and keeps what it projects, so this bounds
/// its memory per object (256 entries of 8 KiB were 2 MiB each: 126 such
/// objects in one namespace took the process past the chart's 256 MiB limit).
pub const MAX_ENTRIES_BYTES: u32 = 256 * 1024;

/// Desired configuration of one `(tenant, configType)`. The tenant comes from the
/// namespace label `tenantconfig.io/tenant`, never from the spec.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "tenantconfig.io",
    version = "v1alpha1",
    kind = "TenantConfig",
    plural = "tenantconfigs",
    shortname = "tcfg",
    namespaced,
    status = "TenantConfigStatus",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".status.tenant"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.projectedKeys"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantConfigSpec {
    /// Configuration type: the DynamoDB sort key / SSM path segment. Defaults to
    /// `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = KEY_MAX_LEN), regex(pattern = KEY_PATTERN))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..'").message("configType must not be '.' or '..'"))]
    pub config_type: Option<String>,

    /// Tags for entries that carry none of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = TAG_MAX_LEN), regex(pattern = TAG_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub default_tags: Vec<String>,

    /// Key/value entries, routed to stores by tag. Keys are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENTRIES))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["key".into()]))]
    #[x_kube(validation = Rule::new("self.map(e, size(bytes(e.key)) + size(bytes(e.value))).sum() <= 262144").message("entries may hold at most 256 KiB of keys and values together (the controller's memory bound per object): split the configuration over several TenantConfigs"))]
    pub entries: Vec<Entry>,

    /// Read-only shared parameter paths to project; each must lie under a
    /// store's `sharedPaths`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub include: Vec<Include>,

    /// Where the projection goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<Projection>,

    /// Enforce: store drift of managed keys is reverted. CreateOnly: a key is
    /// written once, then the store owns it.
    #[serde(default)]
    pub management_policy: ManagementPolicy,

    /// Delete: managed keys leave the stores with the object. Retain: they stay.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Take over entries whose key another writer already put at this
    /// object's location (from then on they are managed: written, reverted on
    /// drift, deleted with the object). Default false: such a key is a
    /// conflict, named in the Ready condition (reason KeyConflict), and
    /// nothing is written for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_existing: bool,

    /// Who may read this configuration through the config service (gRPC);
    /// absent: every ServiceAccount of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// Readers admitted by the config service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Names of ServiceAccounts of this namespace allowed to read it.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub service_accounts: Vec<String>,
}

/// One configuration key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Valid as a ConfigMap key, a DynamoDB map key and one SSM path segment.
    #[schemars(length(min = 1, max = KEY_MAX_LEN), regex(pattern = KEY_PATTERN))]
    #[x_kube(validation = Rule::new(CONFIG_MAP_KEY_RULE).message("key must not be '.' or start with '..' (Kubernetes refuses such ConfigMap keys)"))]
    pub key: String,

    /// The value (at most 8 KiB; Parameter Store Standard tier takes 4 KiB).
    #[schemars(length(max = MAX_VALUE_BYTES))]
    pub value: String,

    /// Routing tags; when empty, `spec.defaultTags` apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = TAG_MAX_LEN), regex(pattern = TAG_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub tags: Vec<String>,

    /// Stored encrypted (SecureString) and projected only into the Secret named
    /// by `projection.secretName`, never into the ConfigMap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure: bool,
}

/// A shared parameter path to project read-only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Include {
    /// Absolute parameter path, e.g. `/tenant-config-shared/prod/payments`.
    #[schemars(length(min = 2, max = PARAMETER_PATH_MAX_LEN), regex(pattern = PARAMETER_PATH_PATTERN))]
    #[x_kube(validation = Rule::new(NO_DOT_SEGMENTS_RULE).message("parameterPath must not contain '.' or '..' segments"))]
    pub parameter_path: String,
}

/// Names of the projected objects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Projection {
    /// ConfigMap name; defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub config_map_name: Option<String>,

    /// Secret for secure entries; without it secure entries are not projected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,
}

/// RFC 1123 subdomain, the rule for ConfigMap and Secret names.
const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ManagementPolicy {
    #[default]
    Enforce,
    CreateOnly,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// Observed state, written only by the controller.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantConfigStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Tenant resolved from the namespace label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `Ready`, `StoreSynced`, `Projected` (metav1.Condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per-store summary of what this object manages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<StoreSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_keys: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_projected_time: Option<Time>,
    /// Only in the controller's cache: every field above, packed into one
    /// allocation, the others then left empty (see [`super::packed_status`]).
    /// Read a status through [`TenantConfig::full_status`]. Never serialized.
    #[serde(skip)]
    #[schemars(skip)]
    pub packed: Option<PackedStatus>,
}

/// What one store holds for this object.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StoreSummary {
    /// ConfigStore name.
    pub name: String,
    /// Backend kind: `DynamoDB` or `ParameterStore`.
    pub kind: String,
    /// Item key or parameter path, e.g. `TENANT#acme/CONFIG#payments`.
    pub location: String,
    /// Number of keys this object manages there.
    pub keys: i32,
}

impl TenantConfig {
    /// The status, whole: unpacked when this is the cache's copy (which holds
    /// it packed), as it is otherwise. The only way the controller reads one.
    pub fn full_status(&self) -> Option<Cow<'_, TenantConfigStatus>> {
        let status = self.status.as_ref()?;
        let Some(packed) = &status.packed else { return Some(Cow::Borrowed(status)) };
        match packed_status::unpack(packed) {
            Some(status) => Some(Cow::Owned(status)),
            // Cannot happen (the bytes are the packer's own); as no status, it
            // costs a sweep of every store and a status write, never a wrong
            // "already done".
            None => {
                tracing::error!(object = %self.owner_key(), "cached status does not unpack; treating it as absent");
                None
            }
        }
    }

    /// Replaces the status with its packed form (for the cache).
    pub fn pack_status(&mut self) {
        if let Some(status) = self.status.as_mut().filter(|s| s.packed.is_none()) {
            let packed = packed_status::pack(status);
            *status = TenantConfigStatus { packed: Some(packed), ..Default::default() };
        }
    }

    /// `spec.configType`, defaulting to the object's name.
    pub fn config_type(&self) -> &str {
        self.spec.config_type.as_deref().or(self.metadata.name.as_deref()).unwrap_or_default()
    }

    /// `{namespace}/{name}`: the owner the stores record, and the object's key
    /// in the readiness metric.
    pub fn owner_key(&self) -> String {
        let meta = &self.metadata;
        format!("{}/{}", meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
    }

    /// ConfigMap the projection writes, defaulting to the object's name.
    pub fn config_map_name(&self) -> &str {
        self.spec
            .projection
            .as_ref()
            .and_then(|p| p.config_map_name.as_deref())
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TenantConfig {
        serde_yaml::from_str(
            r#"
apiVersion: tenantconfig.io/v1alpha1
kind: TenantConfig
metadata: { name: payments, namespace: acme-prod }
spec:
  defaultTags: [tenant]
  entries:
    - { key: provider, value: stripe }
    - { key: db-password, value: "s3cret", tags: [static], secure: true }
  include:
    - parameterPath: /tenant-config-shared/prod/payments
  projection: { secretName: payments-secrets }
"#,
        )
        .unwrap()
    }

    #[test]
    fn design_example_parses_with_defaults() {
        let tc = sample();
        assert_eq!(tc.config_type(), "payments");
        assert_eq!(tc.config_map_name(), "payments");
        assert_eq!(tc.spec.management_policy, ManagementPolicy::Enforce);
        assert_eq!(tc.spec.deletion_policy, DeletionPolicy::Delete);
        assert!(tc.spec.entries[1].secure);
        assert!(!tc.spec.entries[0].secure);
    }

    #[test]
    fn explicit_names_win_over_metadata_name() {
        let mut tc = sample();
        tc.spec.config_type = Some("billing".into());
        tc.spec.projection = Some(Projection { config_map_name: Some("billing-config".into()), secret_name: None });
        assert_eq!(tc.config_type(), "billing");
        assert_eq!(tc.config_map_name(), "billing-config");
    }

    #[test]
    fn the_cache_copy_holds_the_status_packed_and_reads_it_whole() {
        let mut tc = sample();
        assert!(tc.full_status().is_none());
        let status = TenantConfigStatus {
            observed_generation: Some(2),
            tenant: Some("acme".into()),
            config_map: Some("payments".into()),
            ..Default::default()
        };
        tc.status = Some(status.clone());
        assert!(matches!(tc.full_status(), Some(Cow::Borrowed(_))), "an API server's copy is read as it is");
        tc.pack_status();
        let cached = tc.status.as_ref().unwrap();
        assert!(cached.packed.is_some() && cached.tenant.is_none() && cached.observed_generation.is_none());
        assert_eq!(tc.full_status().map(Cow::into_owned), Some(status.clone()));
        tc.pack_status();
        assert_eq!(tc.full_status().map(Cow::into_owned), Some(status), "packing twice packs once");
    }
}
