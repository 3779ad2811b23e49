//! tenant-config-controller: pushes `TenantConfig` entries into DynamoDB / SSM
//! Parameter Store by tag and projects the stores back into ConfigMaps.

pub mod api;
pub mod crd;
pub mod events;
pub mod leader;
pub mod reconcile;
pub mod server;
pub mod store;
pub mod telemetry;
