//! The backends this controller knows, one [`Entry`] each (the type lives
//! beside [`Backend`], so that a backend's module and this list do not import
//! each other). An entry owns what
//! is particular to its kind: building a backend from a ConfigStore spec,
//! where a store change lands (the inverse of its key or path format), and
//! the rate families its calls count against. Everything else is the
//! [`super::Backend`] trait's: its limits ([`super::Backend::validate`]),
//! reads, writes, capabilities.
//!
//! Adding a backend (Secrets Manager, AppConfig, S3) touches exactly: its
//! module here (its `Backend` implementation and its `ENTRY`), one
//! `spec.<backend>` variant in `api::config_store`, and one line in
//! [`ENTRIES`]. README, "Adding a backend", walks through it.

use std::sync::Arc;

use super::{
    Backend, BackendContext, Entry, LimitError, StoreError, StoreRef,
    change::{StoreChange, Target},
    dynamodb, parameter_store,
    rate_limit::RateFamily,
};
use crate::api::ConfigStoreSpec;

/// Every backend kind.
pub const ENTRIES: &[Entry] = &[dynamodb::ENTRY, parameter_store::ENTRY];

/// Builds the backend a ConfigStore describes.
pub fn build(store: &str, spec: &ConfigStoreSpec, ctx: &BackendContext) -> Result<Arc<dyn Backend>, StoreError> {
    ENTRIES
        .iter()
        .find_map(|entry| (entry.build)(store, spec, ctx))
        .ok_or_else(|| LimitError::InvalidStore { store: store.to_string() }.into())
}

/// Where a change lands among the stores (sorted, no duplicates). Empty when
/// no store owns the changed key (another application's item or parameter):
/// such events are acknowledged and counted, nothing else.
pub fn locate(change: &StoreChange, stores: &[StoreRef<'_>]) -> Vec<Target> {
    let mut targets: Vec<Target> =
        stores.iter().flat_map(|store| ENTRIES.iter().flat_map(|entry| (entry.locate)(change, *store))).collect();
    targets.sort();
    targets.dedup();
    targets
}

/// Every backend's rate families.
pub fn rate_families() -> impl Iterator<Item = &'static RateFamily> {
    ENTRIES.iter().flat_map(|entry| entry.rate_families.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_rate_families_are_unique() {
        let mut kinds: Vec<_> = ENTRIES.iter().map(|e| e.kind).collect();
        let mut families: Vec<_> = rate_families().map(|f| f.name).collect();
        let (k, f) = (kinds.len(), families.len());
        kinds.dedup();
        families.sort_unstable();
        families.dedup();
        assert_eq!((kinds.len(), families.len()), (k, f));
    }
}
