//! `tenant-config-controller migrate-paths`: the one-shot move of Parameter
//! Store data into the layout where every location has an environment level
//! ([`crate::store::parameter_store::migration`]). Reads the cluster's
//! Namespaces, TenantConfigs and ConfigStores; a dry run unless `--apply`.

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, api::ListParams};

use crate::{
    api::names,
    api::{ConfigStore, StoreBackend, TenantConfig, identity},
    store::{
        BackendContext, DEFAULT_MAX_ATTEMPTS, RateLimits,
        parameter_store::{
            ParameterStoreBackend,
            migration::{Claims, Outcome, Step},
        },
    },
};

/// The flags of `tenant-config-controller migrate-paths`.
#[derive(clap::Args)]
pub struct Args {
    /// Carry the moves out; without it, only print them.
    #[arg(long)]
    apply: bool,
    /// Only this ConfigStore (repeatable; default: every Parameter Store store).
    #[arg(long = "store")]
    stores: Vec<String>,
    /// Namespace label whose value is the tenant (as the controller's flag).
    #[arg(long, env = "TENANT_CONFIG_TENANT_LABEL", default_value = names::TENANT_LABEL)]
    tenant_label: String,
    /// Namespace label whose value is the environment (as the controller's flag).
    #[arg(long, env = "TENANT_CONFIG_ENVIRONMENT_LABEL", default_value = names::ENVIRONMENT_LABEL)]
    environment_label: String,
}

/// Prints one line per parameter and a summary; an error when a move met a
/// conflict (both parameters are then left for a person to compare).
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await?;
    let claims = claims(&client, &args).await?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let ctx = BackendContext::new(sdk, RateLimits::default(), DEFAULT_MAX_ATTEMPTS);
    let (mut moves, mut conflicts) = (0, 0);
    for store in Api::<ConfigStore>::all(client).list(&ListParams::default()).await? {
        let name = store.metadata.name.clone().unwrap_or_default();
        let Some(StoreBackend::ParameterStore(spec)) = store.spec.backend() else { continue };
        if !args.stores.is_empty() && !args.stores.contains(&name) {
            continue;
        }
        let outcomes = ParameterStoreBackend::new(&name, spec, &ctx).migrate(&claims, args.apply).await?;
        for outcome in outcomes {
            match outcome {
                Outcome::Moved { .. } | Outcome::Planned(Step::Move { .. }) => moves += 1,
                Outcome::Conflict { .. } => conflicts += 1,
                Outcome::Planned(Step::Keep { .. }) => {}
            }
            println!("{name}: {outcome}");
        }
    }
    let verb = if args.apply { "moved" } else { "to move (dry run; --apply moves them)" };
    println!("{moves} parameters {verb}, {conflicts} conflicts");
    if conflicts > 0 {
        return Err(format!("{conflicts} parameters were not moved: their destination holds another value").into());
    }
    Ok(())
}

/// What every TenantConfig in a tenant namespace reads, by namespace labels.
async fn claims(client: &kube::Client, args: &Args) -> Result<Claims, kube::Error> {
    let mut claims = Claims::default();
    let mut identities = std::collections::BTreeMap::new();
    for ns in Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await? {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let labels = ns.metadata.labels.as_ref();
        if let Ok(id) = identity::resolve(&name, labels, &args.tenant_label, &args.environment_label) {
            if let Some(env) = &id.environment {
                claims.add_environment(&id.tenant, env);
            }
            identities.insert(name, id);
        }
    }
    for tc in Api::<TenantConfig>::all(client.clone()).list(&ListParams::default()).await? {
        let Some(id) = tc.metadata.namespace.as_ref().and_then(|ns| identities.get(ns)) else { continue };
        claims.add(&id.tenant, id.environment.as_deref(), tc.config_type(), &tc.owner_key());
    }
    Ok(claims)
}
