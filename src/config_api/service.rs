//! `tenantconfig.v1.ConfigService`: reads and watches of a TenantConfig's
//! projected configuration, for a caller taken only from its token (the
//! namespace is the caller's own; the tenant is that namespace's label).
//!
//! | situation | code |
//! |---|---|
//! | no, invalid, expired or wrong-audience token; not a ServiceAccount | UNAUTHENTICATED |
//! | the caller's namespace has no (valid) tenant label | PERMISSION_DENIED |
//! | `spec.access.serviceAccounts` does not name the caller | PERMISSION_DENIED |
//! | no such TenantConfig in the caller's namespace, or not projected yet | NOT_FOUND |
//! | the service's caches have not listed yet; the API server unreachable | UNAVAILABLE |
//! | the caller's tenant already has the most open watches allowed | RESOURCE_EXHAUSTED |
//!
//! Another namespace's object cannot even be named: no request has a
//! namespace field.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::Stream;
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::{
    auth::{self, Authenticator, Caller, Rejected},
    proto::{self, config_service_server::ConfigService},
    view::View,
};
use crate::{
    api::{Guarded, TenantConfig, identity, names::DIGEST_ANNOTATION},
    reconcile::render::owned_by,
};

/// How often an open watch checks its caller's token without asking the API
/// server (its expiry; the pod it is bound to). The tenant label and
/// `access` are checked at each change of the namespace; the token is
/// reviewed again when its verdict is older than [`auth::CACHE_FOR`].
pub const RECHECK_EVERY: Duration = Duration::from_secs(10);

pub struct ConfigApi {
    pub auth: Arc<Authenticator>,
    pub view: View,
    pub tenant_label: String,
    pub environment_label: String,
    pub open_watches: OpenWatches,
}

/// Open watches by tenant, each tenant's capped: a tenant's many watches
/// cannot take the memory and tasks every tenant's watches share.
pub struct OpenWatches {
    by_tenant: Arc<Mutex<HashMap<String, usize>>>,
    max_per_tenant: usize,
    gauge: Gauge,
}

/// One open watch, counted against its tenant until dropped.
pub struct WatchSlot {
    by_tenant: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
    gauge: Gauge,
}

impl OpenWatches {
    pub fn new(max_per_tenant: usize, gauge: Gauge) -> Self {
        OpenWatches { by_tenant: Arc::default(), max_per_tenant, gauge }
    }

    fn open(&self, tenant: &str) -> Result<WatchSlot, Status> {
        let mut by_tenant = self.by_tenant.lock().unwrap();
        let open = by_tenant.entry(tenant.to_string()).or_default();
        if *open >= self.max_per_tenant {
            return Err(Status::resource_exhausted(format!(
                "tenant {tenant} has {open} open watches, the most the config service allows a tenant \
                 (--config-api-max-watches-per-tenant)"
            )));
        }
        *open += 1;
        self.gauge.inc();
        Ok(WatchSlot { by_tenant: self.by_tenant.clone(), tenant: tenant.to_string(), gauge: self.gauge.clone() })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut by_tenant = self.by_tenant.lock().unwrap();
        if let Some(open) = by_tenant.get_mut(&self.tenant) {
            *open -= 1;
            if *open == 0 {
                by_tenant.remove(&self.tenant);
            }
        }
    }
}

impl ConfigApi {
    /// Whether the token of an open watch still stands: not expired, its pod
    /// (if bound to one) still there, and its verdict at most
    /// [`auth::CACHE_FOR`] old.
    async fn still_valid(&self, caller: &Caller, token: &str) -> Result<(), Status> {
        if caller.expires.is_some_and(|expires| expires <= SystemTime::now()) {
            return Err(Rejected::Expired.into());
        }
        let mut max_age = auth::CACHE_FOR;
        if let Some(pod) = &caller.pod
            && !self.view.pod_exists(&caller.namespace, pod)
        {
            // The pod cache may lag a new pod: the API server decides.
            max_age = Duration::ZERO;
        }
        match self.auth.validate(token, max_age).await {
            Err(status) if max_age.is_zero() && status.code() == tonic::Code::Unauthenticated => {
                Err(Rejected::PodGone.into())
            }
            other => other.map(drop),
        }
    }

    /// The tenant of the caller's namespace.
    fn tenant_of(&self, namespace: &str) -> Result<String, Status> {
        if !*self.view.ready.borrow() {
            return Err(Status::unavailable("the config service is still listing"));
        }
        let ns = self.view.namespaces.get(&ObjectRef::new(namespace));
        let labels = ns.as_ref().and_then(|ns| ns.metadata.labels.as_ref());
        identity::resolve(namespace, labels, &self.tenant_label, &self.environment_label)
            .map(|identity| identity.tenant)
            .map_err(|_| Status::permission_denied(format!("namespace {namespace} belongs to no tenant")))
    }

    /// The caller's TenantConfig `name`, if it may read it.
    fn readable(&self, caller: &Caller, name: &str) -> Result<(Arc<Guarded>, String), Status> {
        let tenant = self.tenant_of(&caller.namespace)?;
        let not_found = || Status::not_found(format!("no TenantConfig {name} in namespace {}", caller.namespace));
        let guarded =
            self.view.tenant_configs.get(&ObjectRef::new(name).within(&caller.namespace)).ok_or_else(not_found)?;
        let tc = guarded.0.as_ref().map_err(|_| not_found())?;
        if !admits(tc, caller) {
            return Err(Status::permission_denied(format!(
                "TenantConfig {name} does not admit ServiceAccount {} (spec.access.serviceAccounts)",
                caller.service_account
            )));
        }
        Ok((guarded.clone(), tenant))
    }

    /// The caller's view of TenantConfig `name` now.
    fn config(&self, caller: &Caller, name: &str) -> Result<proto::Config, Status> {
        let (guarded, tenant) = self.readable(caller, name)?;
        let tc = guarded.0.as_ref().expect("readable checked it deserializes");
        let cm_ref = ObjectRef::new(tc.config_map_name()).within(&caller.namespace);
        let cm = self
            .view
            .config_maps
            .get(&cm_ref)
            .filter(|cm| owned_by(&cm.metadata, &tc.uid().unwrap_or_default()))
            .ok_or_else(|| Status::not_found(format!("TenantConfig {name} is not projected yet")))?;
        let applied = cm.metadata.managed_fields.iter().flatten().filter_map(|e| e.time.as_ref()).max();
        let updated = applied
            .cloned()
            .or_else(|| tc.full_status().and_then(|s| s.last_projected_time.clone()))
            .map(|t| prost_types::Timestamp { seconds: t.0.as_second(), nanos: t.0.subsec_nanosecond() });
        Ok(proto::Config {
            namespace: caller.namespace.clone(),
            name: name.into(),
            tenant,
            data: cm.data.clone().unwrap_or_default().into_iter().collect(),
            digest: cm.annotations().get(DIGEST_ANNOTATION).cloned().unwrap_or_default(),
            updated,
        })
    }
}

/// Whether `spec.access` lets the caller read it (absent: everyone of the namespace).
fn admits(tc: &TenantConfig, caller: &Caller) -> bool {
    tc.spec.access.as_ref().is_none_or(|a| a.service_accounts.contains(&caller.service_account))
}

type ConfigStream = Pin<Box<dyn Stream<Item = Result<proto::Config, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for Arc<ConfigApi> {
    async fn get_config(&self, request: Request<proto::GetConfigRequest>) -> Result<Response<proto::Config>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        Ok(Response::new(self.config(&caller, &request.get_ref().name)?))
    }

    async fn list_configs(
        &self,
        request: Request<proto::ListConfigsRequest>,
    ) -> Result<Response<proto::ListConfigsResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        self.tenant_of(&caller.namespace)?;
        let mut names: Vec<String> = self
            .view
            .tenant_configs
            .state()
            .iter()
            .filter(|g| g.namespace().as_deref() == Some(caller.namespace.as_str()))
            .filter(|g| g.0.as_ref().is_ok_and(|tc| admits(tc, &caller)))
            .map(|g| g.name_any())
            .collect();
        names.sort();
        Ok(Response::new(proto::ListConfigsResponse { names }))
    }

    type WatchConfigStream = ConfigStream;

    async fn watch_config(
        &self,
        request: Request<proto::WatchConfigRequest>,
    ) -> Result<Response<ConfigStream>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let token = super::auth::bearer(request.metadata()).unwrap_or_default().to_string();
        let proto::WatchConfigRequest { name, digest } = request.into_inner();
        let first = self.config(&caller, &name)?;
        let slot = self.open_watches.open(&first.tenant)?;
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        let changes = self.view.changes.subscribe(&caller.namespace);
        let held = Held { digest, first };
        tokio::spawn(async move { watch(api, caller, token, name, held, changes, tx, slot).await });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What a watch starts from: the digest the caller holds, the config now.
struct Held {
    digest: String,
    first: proto::Config,
}

/// Sends the first config unless the caller holds its digest, then each new
/// content of the config, until the caller goes away or loses its right to
/// read it.
#[allow(clippy::too_many_arguments)]
async fn watch(
    api: Arc<ConfigApi>,
    caller: Caller,
    token: String,
    name: String,
    held: Held,
    mut changes: watch::Receiver<()>,
    tx: mpsc::Sender<Result<proto::Config, Status>>,
    _slot: WatchSlot,
) {
    let mut last = held.digest;
    let mut next = Some(held.first);
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    loop {
        if let Some(config) = next.take()
            && config.digest != last
        {
            last = config.digest.clone();
            if tx.send(Ok(config)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = recheck.tick() => {}
            _ = tx.closed() => return,
        }
        let current = match api.still_valid(&caller, &token).await {
            Ok(()) => api.config(&caller, &name),
            Err(status) => Err(status),
        };
        match current {
            Ok(config) => next = Some(config),
            // Token expired or revoked, its pod gone, the object gone, the
            // namespace unlabelled, no longer admitted: the stream ends saying so.
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_open_watches_are_capped_and_given_back() {
        let gauge = Gauge::default();
        let open = OpenWatches::new(2, gauge.clone());
        let first = open.open("acme").unwrap();
        let _second = open.open("acme").unwrap();
        let refused = open.open("acme").map(drop).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--config-api-max-watches-per-tenant"), "{}", refused.message());
        let _other = open.open("globex").expect("another tenant is not held back");
        assert_eq!(gauge.get(), 3);
        drop(first);
        assert_eq!(gauge.get(), 2);
        let _again = open.open("acme").expect("a closed watch gives its place back");
    }
}
