//! `ConfigStore`: one storage backend (the Strategy) and the tags it serves.
//! Cluster-scoped, owned by the platform team.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{NO_DOT_SEGMENTS_RULE, PARAMETER_PATH_MAX_LEN, PARAMETER_PATH_PATTERN, TAG_MAX_LEN, TAG_PATTERN};

/// A storage backend for tenant configuration, selected by entry tags.
///
/// Exactly one backend field (`dynamodb`, `parameterStore`) must be set. Adding a
/// backend means adding one optional field here, one arm to [`StoreBackend`] and
/// its implementation module.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "tenantconfig.io",
    version = "v1alpha1",
    kind = "ConfigStore",
    plural = "configstores",
    shortname = "cstore",
    status = "ConfigStoreStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Tags","type":"string","jsonPath":".spec.tags"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("[has(self.dynamodb), has(self.parameterStore)].filter(b, b).size() == 1").message("exactly one backend (dynamodb or parameterStore) must be set"))]
#[serde(rename_all = "camelCase")]
pub struct ConfigStoreSpec {
    /// Entries carrying any of these tags route to this store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = TAG_MAX_LEN), regex(pattern = TAG_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub tags: Vec<String>,

    /// Entries whose key starts with one of these prefixes route to this store too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub key_prefixes: Vec<String>,

    /// The store for entries that match no store's tags or prefixes. At most one
    /// store should be the default; the controller refuses to route when several are.
    #[serde(default)]
    pub default: bool,

    /// Tie-break when several stores match an entry: the highest priority wins,
    /// then the lexically smallest name.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,

    /// Amazon DynamoDB: one item per (tenant, configType).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamodb: Option<DynamoDbStore>,

    /// AWS Systems Manager Parameter Store: one parameter per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_store: Option<ParameterStoreStore>,

    /// Per-tenant limits on what all of one tenant's TenantConfigs put in this
    /// store, checked before any write. Parameter Store defaults to 1,000
    /// entries per tenant (a tenth of an account's 10,000 Standard parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<TenantQuota>,
}

/// Per-tenant limits of one store. An object that would take its tenant past
/// one writes nothing new (`Ready=False`, reason `QuotaExceeded`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuota {
    /// Most entries (parameters / item keys) of one tenant in this store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_entries: Option<i64>,
    /// Most bytes of keys and values of one tenant in this store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,
}

/// Parameter Store's default per-tenant entry limit.
pub const DEFAULT_PARAMETER_STORE_MAX_ENTRIES: i64 = 1000;

/// Observed state, written only by the controller: `Ready` (reason `Valid`, or
/// `Overlap` naming the store(s) it overlaps; then nothing routes to it).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where a DynamoDB-backed store keeps its items.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DynamoDbStore {
    /// Table name (3–255 characters of `[a-zA-Z0-9_.-]`).
    #[schemars(length(min = 3, max = 255), regex(pattern = r"^[a-zA-Z0-9_.-]+$"))]
    pub table_name: String,

    /// Partition key attribute name.
    #[serde(default = "default_partition_key")]
    #[schemars(length(min = 1, max = 255))]
    pub partition_key: String,

    /// Sort key attribute name.
    #[serde(default = "default_sort_key")]
    #[schemars(length(min = 1, max = 255))]
    pub sort_key: String,

    /// AWS region; defaults to the controller's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// Endpoint override, for local emulators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: Option<String>,
}

fn default_partition_key() -> String {
    "pk".into()
}
fn default_sort_key() -> String {
    "sk".into()
}

/// Where a Parameter Store-backed store keeps its parameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParameterStoreStore {
    /// Tenant data lives under `{pathPrefix}/{tenant}/...`.
    #[schemars(length(min = 2, max = PARAMETER_PATH_MAX_LEN), regex(pattern = PARAMETER_PATH_PATTERN))]
    #[x_kube(validation = Rule::new(NO_DOT_SEGMENTS_RULE).message("pathPrefix must not contain '.' or '..' segments"))]
    #[x_kube(validation = Rule::new("!self.lowerAscii().matches('^/?(aws|ssm)')").message("pathPrefix must not start with 'aws' or 'ssm' (reserved by AWS, case-insensitive)"))]
    pub path_prefix: String,

    /// Read-only parameter paths tenants may include (and nothing else).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 2, max = PARAMETER_PATH_MAX_LEN), regex(pattern = PARAMETER_PATH_PATTERN)))]
    #[x_kube(validation = Rule::new(concat!("self.all(p, ", "!p.split('/').exists(s, s == '.' || s == '..')", ")")).message("sharedPaths must not contain '.' or '..' segments"))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub shared_paths: Vec<String>,

    /// Highest parameter tier the controller may use; values that fit in
    /// Standard are always written as Standard.
    #[serde(default)]
    pub tier: ParameterTier,

    /// KMS key for `secure` entries (SecureString). Without it, secure entries
    /// routed here are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,

    /// AWS region; defaults to the controller's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// Endpoint override, for local emulators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: Option<String>,
}

/// SSM Parameter Store tiers.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ParameterTier {
    #[default]
    Standard,
    Advanced,
    #[serde(rename = "Intelligent-Tiering")]
    IntelligentTiering,
}

/// The backend a store uses, borrowed from its spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StoreBackend<'a> {
    DynamoDb(&'a DynamoDbStore),
    ParameterStore(&'a ParameterStoreStore),
}

impl ConfigStoreSpec {
    /// The single configured backend, or `None` when zero or several are set
    /// (the CRD refuses both; this guards objects written around it).
    pub fn backend(&self) -> Option<StoreBackend<'_>> {
        match (&self.dynamodb, &self.parameter_store) {
            (Some(d), None) => Some(StoreBackend::DynamoDb(d)),
            (None, Some(p)) => Some(StoreBackend::ParameterStore(p)),
            _ => None,
        }
    }

    /// The per-tenant limits in force: the spec's, else the backend's defaults.
    pub fn tenant_quota(&self) -> TenantQuota {
        let default_entries = match self.backend() {
            Some(StoreBackend::ParameterStore(_)) => Some(DEFAULT_PARAMETER_STORE_MAX_ENTRIES),
            _ => None,
        };
        let set = self.quota.clone().unwrap_or_default();
        TenantQuota { max_entries: set.max_entries.or(default_entries), max_bytes: set.max_bytes }
    }

    /// The shared paths (read-only includes) this store serves; empty for a
    /// backend without them.
    pub fn shared_paths(&self) -> &[String] {
        match self.backend() {
            Some(StoreBackend::ParameterStore(p)) => &p.shared_paths,
            Some(StoreBackend::DynamoDb(_)) | None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let spec: ConfigStoreSpec = serde_json::from_value(serde_json::json!({
            "tags": ["tenant"],
            "dynamodb": { "tableName": "tenant-config" }
        }))
        .unwrap();
        let Some(StoreBackend::DynamoDb(d)) = spec.backend() else { panic!("expected dynamodb") };
        assert_eq!((d.partition_key.as_str(), d.sort_key.as_str()), ("pk", "sk"));
        assert!(!spec.default);
        assert_eq!(spec.priority, 0);
    }

    #[test]
    fn backend_requires_exactly_one() {
        let none = ConfigStoreSpec::default();
        assert_eq!(none.backend(), None);
        let both = ConfigStoreSpec {
            dynamodb: Some(DynamoDbStore::default()),
            parameter_store: Some(ParameterStoreStore::default()),
            ..Default::default()
        };
        assert_eq!(both.backend(), None);
    }

    #[test]
    fn tier_names_match_aws() {
        let t: ParameterTier = serde_json::from_str("\"Intelligent-Tiering\"").unwrap();
        assert_eq!(t, ParameterTier::IntelligentTiering);
        assert_eq!(serde_json::to_string(&ParameterTier::Advanced).unwrap(), "\"Advanced\"");
    }
}
