//! CRD types of the `tenantconfig.io/v1alpha1` API (DESIGN.md §2) and the rules
//! shared between the CRD schema and the controller's own checks.

pub mod conditions;
pub mod config_store;
pub mod identity;
pub mod names;
pub mod packed_status;
pub mod paths;
pub mod tenant_config;

use kube::core::DeserializeGuard;

pub use config_store::{
    ConfigStore, ConfigStoreSpec, DynamoDbStore, ParameterStoreStore, ParameterTier, StoreBackend, TenantQuota,
};
pub use tenant_config::{
    DeletionPolicy, Entry, Include, ManagementPolicy, Projection, StoreSummary, TenantConfig, TenantConfigSpec,
    TenantConfigStatus,
};

/// TenantConfigs as the watch delivers them: an object that does not
/// deserialize is reported on its own instead of failing the whole watch.
pub type Guarded = DeserializeGuard<TenantConfig>;

/// Drops what no cache of TenantConfigs reads: the server-side-apply
/// bookkeeping and kubectl's client-side copy of the last applied manifest,
/// which together can outweigh the object itself (a cache holds every
/// TenantConfig of the cluster); and packs the status (its largest part).
pub fn slim_for_cache(tc: &mut Guarded) {
    use kube::ResourceExt;
    tc.managed_fields_mut().clear();
    tc.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
    if let Ok(tc) = &mut tc.0 {
        tc.pack_status();
    }
}

/// API group of every resource this controller defines.
pub const GROUP: &str = "tenantconfig.io";

/// An entry key (and a `configType`): valid as a ConfigMap key, a DynamoDB map key
/// and one SSM path segment.
pub const KEY_PATTERN: &str = "^[-._a-zA-Z0-9]+$";
pub const KEY_MAX_LEN: usize = 128;
/// Kubernetes' limit on ConfigMap and Secret keys.
pub const CONFIG_MAP_KEY_MAX_LEN: usize = 253;

/// Tags are short labels used only for routing.
pub const TAG_PATTERN: &str = "^[-._a-zA-Z0-9]+$";
pub const TAG_MAX_LEN: usize = 63;

/// An absolute SSM path: `/seg/seg/...`, each segment a key-like name.
pub const PARAMETER_PATH_PATTERN: &str = "^(/[-._a-zA-Z0-9]+)+$";
/// SSM parameter names (with their full path) are at most 1011 characters.
pub const PARAMETER_PATH_MAX_LEN: usize = 1011;

/// CEL that refuses `.` and `..` as path segments (traversal), applied to a path string.
pub(crate) const NO_DOT_SEGMENTS_RULE: &str = "!self.split('/').exists(s, s == '.' || s == '..')";

/// True when `key` satisfies the entry-key rule the CRD enforces. The controller
/// re-checks keys that reach it from the stores (written by other systems).
pub fn is_valid_key(key: &str) -> bool {
    key.len() <= KEY_MAX_LEN && is_valid_config_map_key(key)
}

/// A key Kubernetes accepts in a ConfigMap or Secret, exactly as apimachinery's
/// `IsConfigMapKey` decides: `[-._a-zA-Z0-9]{1,253}`, not `.`, not starting
/// with `..`. What keys other writers put into the stores must satisfy to be
/// projected.
pub fn is_valid_config_map_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= CONFIG_MAP_KEY_MAX_LEN
        && key != "."
        && !key.starts_with("..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The CEL rule for entry keys beyond their pattern: what apimachinery's
/// `IsConfigMapKey` refuses besides the charset.
pub(crate) const CONFIG_MAP_KEY_RULE: &str = "self != '.' && !self.startsWith('..')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rule_matches_the_design() {
        for ok in ["provider", "retry-limit", "a.b_c-D9", ".x", "x..", "a..b", &"k".repeat(128)] {
            assert!(is_valid_key(ok), "{ok:?} should be valid");
        }
        // "..x": Kubernetes refuses a ConfigMap key that starts with ".." (IsConfigMapKey).
        for bad in ["", ".", "..", "..x", "...", "a/b", "a b", "ü", "a:b", &"k".repeat(129)] {
            assert!(!is_valid_key(bad), "{bad:?} should be invalid");
        }
    }
}
