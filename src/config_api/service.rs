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
//!
//! Another namespace's object cannot even be named: no request has a
//! namespace field.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tonic::{Request, Response, Status};

use super::{
    auth::{Authenticator, Caller},
    proto::{self, config_service_server::ConfigService},
    view::View,
};
use crate::{
    api::{Guarded, TenantConfig, identity, names::DIGEST_ANNOTATION},
    reconcile::render::owned_by,
};

/// How often an open watch checks its caller again (token, tenant label,
/// access): a caller that lost its right is cut off within this long.
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);

pub struct ConfigApi {
    pub auth: Arc<Authenticator>,
    pub view: View,
    pub tenant_label: String,
    pub environment_label: String,
}

impl ConfigApi {
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
        let updated = tc
            .status
            .as_ref()
            .and_then(|s| s.last_projected_time.as_ref())
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
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        let changes = self.view.changes.subscribe();
        tokio::spawn(async move { watch(api, caller, token, name, digest, first, changes, tx).await });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Sends `first` unless the caller holds its digest, then each new content of
/// the config, until the caller goes away or loses its right to read it.
#[allow(clippy::too_many_arguments)]
async fn watch(
    api: Arc<ConfigApi>,
    caller: Caller,
    token: String,
    name: String,
    held: String,
    first: proto::Config,
    mut changes: tokio::sync::broadcast::Receiver<String>,
    tx: mpsc::Sender<Result<proto::Config, Status>>,
) {
    let mut last = held;
    let mut next = Some(first);
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
            change = changes.recv() => match change {
                Ok(ns) if ns != caller.namespace => continue,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = recheck.tick() => {
                if let Err(status) = api.auth.validate(&token, RECHECK_EVERY).await {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            _ = tx.closed() => return,
        }
        match api.config(&caller, &name) {
            Ok(config) => next = Some(config),
            // Gone, unlabelled, no longer admitted: the stream ends saying so.
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
}
