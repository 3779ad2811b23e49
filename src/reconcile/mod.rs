//! The TenantConfig reconciler: pure steps (identity, projection) between thin
//! IO steps.

pub mod controller;
pub mod echo;
pub mod identity;
pub mod projection;
pub mod status;

use kube::core::DeserializeGuard;

use crate::api::TenantConfig;

/// TenantConfigs as the watch delivers them: an object that does not
/// deserialize is reported on its own instead of failing the whole watch.
pub type Guarded = DeserializeGuard<TenantConfig>;
