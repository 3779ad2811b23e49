//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager).
//!
//! The controller and the event consumer run only while this process holds
//! the Lease; losing it stops both, and the process stands by again. On
//! shutdown the Lease is released so a standby takes over at once.
//!
//! kube-lease-manager's standby sleeps until the holder's lease would expire;
//! a released Lease would wait for that too. A watch on the Lease notices the
//! release and restarts the standby's manager, which then locks the free Lease
//! immediately.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture, future::Shared};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tracing::{info, warn};

use crate::{metrics::Metrics, server::Probes};

pub struct Election {
    pub client: Client,
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
}

pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// How long a standby that finds the Lease free lets its manager take it
/// before starting a manager that will.
const FREE_AT_START_WAIT: Duration = Duration::from_secs(1);

#[derive(PartialEq)]
enum Standby {
    Acquired,
    Released,
    Shutdown,
}

impl Election {
    /// Runs `work` whenever this process holds the Lease, until `shutdown`.
    /// `work` gets a future that resolves when it must stop (shutdown or Lease lost).
    pub async fn run<W, Fut>(
        self,
        probes: Arc<Probes>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
        work: W,
    ) -> Result<(), LeaseManagerError>
    where
        W: Fn(BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let seconds = self.lease_duration.as_secs().max(2);
        loop {
            let manager = LeaseManagerBuilder::new(self.client.clone(), &self.lease_name)
                .with_namespace(&self.namespace)
                .with_identity(&self.identity)
                .with_duration(seconds)
                .with_grace((seconds / 3).max(1))
                .with_field_manager(crate::api::names::FIELD_MANAGER)
                .build()
                .await?;
            let (mut leading, lease_task) = manager.watch().await;
            probes.lease_known.store(true, Ordering::Release);
            info!(lease = %self.lease_name, namespace = %self.namespace, identity = %self.identity, "standing by for the lease");
            let outcome = tokio::select! {
                _ = shutdown.clone() => Standby::Shutdown,
                changed = leading.wait_for(|l| *l) => if changed.is_ok() { Standby::Acquired } else { Standby::Shutdown },
                _ = released_by_other(&self.client, &self.namespace, &self.lease_name, &self.identity) => Standby::Released,
            };
            if outcome == Standby::Released {
                info!("the lease was released: trying to take it now");
                release(leading, lease_task).await;
                continue;
            }
            if outcome == Standby::Acquired {
                info!(identity = %self.identity, "acquired the lease: starting the controller and the event consumer");
                probes.leading.store(true, Ordering::Release);
                metrics.leader.set(1);
                work(until_lost(leading.clone(), shutdown.clone())).await;
                probes.leading.store(false, Ordering::Release);
                metrics.leader.set(0);
            }
            release(leading, lease_task).await;
            if shutdown.clone().now_or_never().is_some() {
                return Ok(());
            }
            info!("standing by for the lease again");
        }
    }
}

/// Resolves when the term ends: on shutdown, or when the Lease is lost.
fn until_lost(mut leading: tokio::sync::watch::Receiver<bool>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
    async move {
        tokio::select! {
            _ = shutdown => {}
            _ = leading.wait_for(|l| !*l) => {
                warn!("lost the lease: stopping the controller and the event consumer");
            }
        }
    }
    .boxed()
}

/// Closing the channel makes the manager release the Lease (if held) and end.
async fn release(
    leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
) {
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => info!("lease released"),
        Ok(Ok(Err(e))) => warn!(error = %e, "could not release the lease; it expires on its own"),
        _ => warn!("lease release did not finish; it expires on its own"),
    }
}

/// Resolves when the Lease, after being held by another identity, has no
/// holder — or when it has none already as this watch first sees it and the
/// manager has not taken it within a second: the holder released it between
/// the manager's read and this watch (a SIGTERM right after this standby
/// started), and the manager sleeps until the old holder's term would expire
/// (seen once: a 5.9 s handover instead of 0.1 s).
async fn released_by_other(client: &Client, namespace: &str, name: &str, identity: &str) {
    let api = Api::<Lease>::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut held_by_other = false;
    let mut first = true;
    while let Some(event) = events.next().await {
        let Ok(lease) = event else { continue };
        match lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty()) {
            Some(holder) => held_by_other = holder != identity,
            None if held_by_other => return,
            None if first => {
                tokio::time::sleep(FREE_AT_START_WAIT).await;
                return;
            }
            None => {}
        }
        first = false;
    }
    std::future::pending::<()>().await
}
