//! The TenantConfig reconciler: pure steps (identity, projection) between thin
//! IO steps.

pub mod controller;
pub mod identity;
pub mod projection;
