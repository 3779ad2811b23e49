//! Names this controller writes into or reads from other objects: labels,
//! annotations, tags, the finalizer and the server-side-apply field manager.
//! One definition each, whoever uses them.

/// Server-side-apply field manager of every write (ConfigMaps, Secrets,
/// status, the Lease) and the `app.kubernetes.io/managed-by` value of what
/// this controller projects.
pub const FIELD_MANAGER: &str = "tenant-config-controller";
/// Held on every TenantConfig until its keys have left the stores.
pub const FINALIZER: &str = "tenantconfig.io/cleanup";

/// Namespace label whose value is the tenant (the default of `--tenant-label`),
/// and the label projected ConfigMaps and Secrets carry with the tenant.
pub const TENANT_LABEL: &str = "tenantconfig.io/tenant";
/// Namespace label adding an environment dimension (default of `--environment-label`).
pub const ENVIRONMENT_LABEL: &str = "tenantconfig.io/environment";
/// Label selecting everything this controller projects (the ConfigMap watch filters on it).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Digest of the projected content on a ConfigMap or Secret.
pub const DIGEST_ANNOTATION: &str = "tenantconfig.io/source-digest";

/// Parameter Store tags on every parameter this controller writes.
pub const TAG_TENANT: &str = TENANT_LABEL;
pub const TAG_CONFIG_TYPE: &str = "tenantconfig.io/config-type";
pub const TAG_MANAGED_BY: &str = "tenantconfig.io/managed-by";

/// Pod label opting a pod in to refresh: its annotation
/// [`CONFIG_DIGEST_ANNOTATION`] is set when a projected ConfigMap or Secret it
/// mounts changes, which makes the kubelet update the files at once.
pub const REFRESH_LABEL: &str = "tenantconfig.io/refresh";
/// Deployment / StatefulSet / DaemonSet label opting a workload in to rollout:
/// its pod template's [`CONFIG_DIGEST_ANNOTATION`] is set when a projected
/// ConfigMap or Secret it reads changes (a normal rolling update).
pub const ROLLOUT_LABEL: &str = "tenantconfig.io/rollout";
/// Digest of every projected ConfigMap and Secret a pod (template) reads.
pub const CONFIG_DIGEST_ANNOTATION: &str = "tenantconfig.io/config-digest";
