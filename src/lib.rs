//! tenant-config-controller: pushes `TenantConfig` entries into DynamoDB / SSM
//! Parameter Store by tag and projects the stores back into ConfigMaps.
//!
//! Imports run one way: `api` ← `store` ← (`reconcile`, `events`) ← `runtime` ← `main`;
//! `workloads` depends on `api` only and is told by `reconcile` what it projected;
//! both publish Kubernetes Events through `recorder`, which depends on nothing here,
//! as `packing` (the byte codec of what is kept per object) does not.

pub mod api;
pub mod config_api;
pub mod crd;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod packing;
pub mod reconcile;
pub mod recorder;
pub mod runtime;
pub mod server;
pub mod spare;
pub mod store;
pub mod telemetry;
pub mod work_permits;
pub mod workloads;
