//! The reconcile slots (`--concurrency`) as permits a reconcile holds while it
//! works — calls the API server or AWS — and gives back while it only waits
//! for AWS rate tokens (DESIGN.md §12). A reconcile queued behind a rate limit
//! then takes no capacity another tenant's object needs: with every slot held
//! by reconciles waiting for Parameter Store's 3 writes a second, a DynamoDB
//! object of another tenant used to wait minutes for a slot.
//!
//! The permit travels with the reconcile's task (a task-local), so the rate
//! limiter, deep in a store call, can give it back without knowing reconciles.

use std::{
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The permits of the process's reconciles, handed out in the order asked.
pub struct WorkPermits(Arc<Semaphore>);

/// The permit the current task holds, if any, and where it goes back to.
struct Held {
    permits: Arc<Semaphore>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

tokio::task_local! {
    static HELD: Held;
}

impl WorkPermits {
    pub fn new(permits: u16) -> Self {
        WorkPermits(Arc::new(Semaphore::new(usize::from(permits.max(1)))))
    }

    /// Runs `work` holding a permit, waiting for one first.
    pub async fn run<F: Future>(&self, work: F) -> F::Output {
        let permit = self.0.clone().acquire_owned().await.expect("the semaphore is never closed");
        let held = Held { permits: self.0.clone(), permit: Mutex::new(Some(permit)) };
        HELD.scope(held, work).await
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// Runs `wait` — a wait that needs no capacity of its own — without the
/// current task's permit, and takes a permit again (in line with others)
/// before going on. Outside [`WorkPermits::run`] it just waits.
pub async fn while_waiting<F: Future>(wait: F) -> F::Output {
    let released = HELD
        .try_with(|held| {
            let permit = held.permit.lock().expect("permit lock").take();
            permit.map(|permit| {
                drop(permit);
                held.permits.clone()
            })
        })
        .ok()
        .flatten();
    let output = wait.await;
    if let Some(permits) = released {
        let permit = permits.acquire_owned().await.expect("the semaphore is never closed");
        let _ = HELD.try_with(|held| *held.permit.lock().expect("permit lock") = Some(permit));
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiting_reconcile_lends_its_permit_and_takes_one_again() {
        let permits = Arc::new(WorkPermits::new(1));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let waiting = {
            let permits = permits.clone();
            tokio::spawn(async move {
                permits
                    .run(async {
                        while_waiting(async { released.await.unwrap() }).await;
                        permits.available()
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(permits.available(), 1, "the only permit is free while its holder waits for a token");
        let other = tokio::time::timeout(Duration::from_secs(1), permits.run(async { "worked" })).await;
        assert_eq!(other.unwrap(), "worked", "another reconcile works meanwhile");
        release.send(()).unwrap();
        assert_eq!(waiting.await.unwrap(), 0, "the waiter holds a permit again once it goes on");
        assert_eq!(permits.available(), 1, "and gives it back at the end");
        assert_eq!(while_waiting(async { 7 }).await, 7, "outside a reconcile it only waits");
    }
}
