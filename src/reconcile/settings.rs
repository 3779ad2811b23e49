//! The controller's settings: command-line flags with environment variables.

use std::time::Duration;

use crate::api::names;

/// Controller settings: command-line flags (with environment variables),
/// flattened into `tenant-config-controller run`. [`Settings::default`] gives
/// the flags' defaults, so they are written once, here.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Namespace label whose value is the tenant. Namespaces without it get nothing written.
    #[arg(long, env = "TENANT_CONFIG_TENANT_LABEL", default_value = names::TENANT_LABEL)]
    pub tenant_label: String,
    /// Namespace label whose value adds an environment dimension to store keys.
    #[arg(long, env = "TENANT_CONFIG_ENVIRONMENT_LABEL", default_value = names::ENVIRONMENT_LABEL)]
    pub environment_label: String,
    /// The stores are compared with what every object last projected this often
    /// (lost events, out-of-band drift); objects that differ are reconciled. E.g. 10m, 30s.
    #[arg(long, env = "TENANT_CONFIG_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// How the resync reads the stores: `bulk` reads each tenant once per store and
    /// reconciles only what changed; `per-object` reconciles every object (one read of
    /// each of its stores per object; the behaviour before bulk reads, kept for comparison).
    #[arg(long, env = "TENANT_CONFIG_RESYNC_MODE", value_enum, default_value_t = ResyncMode::Bulk)]
    pub resync_mode: ResyncMode,
    /// Reconciles working at once; one waiting only for AWS rate tokens lends
    /// its slot meanwhile. 16 and 32 measured side by side
    /// (BENCHMARKS.md): 16 is faster for a shared fan-out to 1,000 objects and
    /// for a cold start of 10,000.
    #[arg(long, env = "TENANT_CONFIG_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Reconciles of one tenant's objects at once (0 = no limit). A tenant
    /// whose objects wait for AWS (rate limits, a slow store) then holds at
    /// most this many of the `--concurrency` slots; its other objects wait in
    /// the tenant's queue, not in a slot, so other tenants' objects get through.
    #[arg(long, env = "TENANT_CONFIG_TENANT_CONCURRENCY", default_value_t = 4)]
    pub tenant_concurrency: u16,
    /// Project secure entries into Secrets (the ServiceAccount then needs to write Secrets).
    #[arg(long, env = "TENANT_CONFIG_SECURE_PROJECTION", default_value_t = false)]
    pub secure_projection: bool,
    /// A cached read of an included shared path is refreshed after this long even without an event.
    #[arg(long, env = "TENANT_CONFIG_SHARED_CACHE_MAX_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub shared_cache_max_age: Duration,
}

/// How the periodic resync finds the objects to reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ResyncMode {
    /// One bulk read per tenant and store; only objects whose stores changed.
    Bulk,
    /// Every object, each reading its own stores.
    PerObject,
}

impl Default for Settings {
    /// The flags' defaults, ignoring the environment.
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let command = Settings::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(["defaults"]).expect("every setting has a default");
        Settings::from_arg_matches(&matches).expect("defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_are_the_flags_defaults() {
        let s = Settings::default();
        assert_eq!(s.tenant_label, "tenantconfig.io/tenant");
        assert_eq!(s.environment_label, "tenantconfig.io/environment");
        assert_eq!(s.resync_interval, Duration::from_secs(600));
        assert_eq!(s.resync_mode, ResyncMode::Bulk);
        assert_eq!(s.concurrency, 16);
        assert!(!s.secure_projection);
        assert_eq!(s.shared_cache_max_age, Duration::from_secs(300));
    }
}
