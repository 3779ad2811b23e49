//! Store changes: what a parsed store-change event says changed (a parameter
//! name, an item's key), and where that lands among the ConfigStores. Pure.
//!
//! The events layer parses message bodies into a [`StoreChange`]; each
//! backend decodes the changes of its own key or path format (the inverse of
//! how it encodes a [`Location`]), so a new backend decodes its own changes.

use std::fmt;

use super::{Location, StoreRef};

/// What changed in a store, as an event reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChange {
    /// An SSM parameter was created, updated, labelled or deleted.
    Parameter { name: String, operation: String },
    /// A DynamoDB item was inserted, modified or removed.
    Item {
        event_name: ItemEventName,
        /// From the stream ARN, when the record carries one.
        table: Option<String>,
        /// The item's string-typed key attributes.
        keys: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemEventName {
    Insert,
    Modify,
    Remove,
}

/// Where a change lands.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A tenant's own keys: the TenantConfigs of that tenant (and environment)
    /// with that configType read it.
    Tenant { store: String, location: Location },
    /// A parameter under a store's shared path: the TenantConfigs that include a
    /// path above it read it.
    Shared { store: String, name: String },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tenant { store, location: Location { tenant, environment, config_type } } => match environment {
                Some(env) => write!(f, "{store}: tenant {tenant}/{env}, configType {config_type}"),
                None => write!(f, "{store}: tenant {tenant}, configType {config_type}"),
            },
            Target::Shared { store, name } => write!(f, "{store}: shared {name}"),
        }
    }
}

/// Maps a change onto the stores (each backend decodes its own changes:
/// [`super::registry::locate`]).
pub fn locate(change: &StoreChange, stores: &[StoreRef<'_>]) -> Vec<Target> {
    super::registry::locate(change, stores)
}
