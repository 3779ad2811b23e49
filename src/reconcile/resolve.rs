//! The reconcile's `resolve` step: what the cluster says about an object
//! before anything is decided — its namespace's labels (its tenant), the
//! ConfigStores known, and what already stands under its projection's names.
//! Reads only; the decisions are [`super::plan`]'s.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, ResourceExt};

use super::{
    context::Context,
    error::Error,
    plan::{self, Existing, SecretUnder},
    project,
};
use crate::api::{
    ConfigStore, TenantConfig,
    identity::{Identity, IdentityError},
};

/// What `plan` decides from.
pub struct Resolved {
    /// The namespace's labels (status names the tenant from them).
    pub labels: Option<BTreeMap<String, String>>,
    pub identity: Result<Identity, IdentityError>,
    /// Every ConfigStore in the cache.
    pub config_stores: Vec<Arc<ConfigStore>>,
    pub existing: Existing,
}

pub async fn resolve(ctx: &Context, tc: &TenantConfig) -> Result<Resolved, Error> {
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    let labels = ctx.namespace_labels(&ns).await?;
    let identity = ctx.identity(&ns, labels.as_ref());
    let config_stores = ctx.caches.config_stores.state();
    let config_maps = Api::<ConfigMap>::namespaced(ctx.kube.client.clone(), &ns);
    let config_map = config_maps.get_opt(tc.config_map_name()).await?;
    let secret = match plan::secret_name(tc, ctx.settings.secure_projection) {
        Some(name) => {
            let api = Api::<Secret>::namespaced(ctx.kube.client.clone(), &ns);
            project::secret_under(&api, name, &tc.uid().unwrap_or_default()).await?
        }
        None => SecretUnder::Absent,
    };
    Ok(Resolved { labels, identity, config_stores, existing: Existing { config_map, secret } })
}
