//! The SQS consumer: receive (long poll), trigger, wait, acknowledge.
//!
//! A message is deleted only after every object it triggered has completed a
//! successful reconcile that started after the message was received. Malformed
//! messages are never deleted (the queue's redrive policy moves them to its
//! dead-letter queue); well-formed events that concern no object are deleted
//! at once. A message whose objects are still reconciling when 80% of its
//! visibility timeout has passed is hidden for another timeout, up to
//! [`MAX_VISIBILITY_EXTENSIONS`] times; after that it is left alone, becomes
//! visible again and is handled anew.
//!
//! On shutdown nothing new is received. A long poll under way is not dropped:
//! SQS keeps it open after its client has gone and hands it what arrives,
//! which would then stay hidden for the visibility timeout from whoever leads
//! next (a change made during a rollout reached the new leader 60 s late). It
//! finishes in the background ([`AbandonedPolls`]) and what it brings is made
//! visible again at once, as are the messages received and not handled
//! within the grace period.
//!
//! Nothing is received before the caches have listed: routed against an empty
//! ConfigStore or TenantConfig cache, a change would concern no object and be
//! deleted as such, lost (a new leader finds the queue's backlog at once).

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
};
use futures::{StreamExt, channel::mpsc::UnboundedSender, stream::FuturesUnordered};
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, warn};

use super::{envelope, tracker::Tracker};
use crate::{
    api::Guarded,
    metrics::{MalformedLabels, Metrics},
    store::{BackendContext, CallGate},
};

/// SQS's own limits: 20 s long poll, 10 messages per receive / delete batch.
const WAIT_TIME_SECONDS: i32 = 20;
/// How long a stopping process waits for its abandoned long poll: the poll's
/// own limit and some time for the release.
pub const ABANDONED_POLL_WAIT: Duration = Duration::from_secs(WAIT_TIME_SECONDS as u64 + 5);
const MAX_MESSAGES: i32 = 10;
const DELETE_BATCH: usize = 10;
/// A message whose objects are still being reconciled when 80% of its
/// visibility timeout has passed is hidden for another timeout, up to this
/// many times, before it is left for redelivery. A change to a shared path
/// included by thousands of objects takes longer than one timeout; redelivered,
/// it would trigger all of them again (seen in the scale benchmark).
const MAX_VISIBILITY_EXTENSIONS: u32 = 10;

#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// Where a stopping consumer leaves its long poll to finish; shared by
    /// every leadership term of the process.
    pub abandoned: AbandonedPolls,
    pub queue_url: String,
    /// Visibility timeout requested on every receive: how long a message stays
    /// hidden while its objects are reconciled.
    pub visibility_timeout: Duration,
    /// Messages being waited on at once; receiving pauses above this.
    pub max_in_flight: usize,
    /// After shutdown is requested, how long handled messages may still be
    /// acknowledged before the rest is left for redelivery.
    pub shutdown_grace: Duration,
}

impl ConsumerSettings {
    pub fn new(queue_url: String) -> Self {
        ConsumerSettings {
            abandoned: AbandonedPolls::default(),
            queue_url,
            visibility_timeout: Duration::from_secs(60),
            max_in_flight: 1000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Long polls a shutdown cut short, finishing in the background, each
/// releasing what it brings.
#[derive(Clone, Default)]
pub struct AbandonedPolls(Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl std::fmt::Debug for AbandonedPolls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AbandonedPolls({})", self.0.lock().unwrap().len())
    }
}

impl AbandonedPolls {
    fn push(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.0.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Waits, at most `within`, for the polls to end and their messages to be
    /// released. Called after the Lease is released: the next leader takes
    /// over meanwhile.
    pub async fn finish(&self, within: Duration) {
        let tasks = std::mem::take(&mut *self.0.lock().unwrap());
        if tasks.is_empty() {
            return;
        }
        info!(polls = tasks.len(), "waiting for the long poll under way at shutdown, to release what it brings");
        if tokio::time::timeout(within, futures::future::join_all(tasks)).await.is_err() {
            warn!(
                "the long poll under way at shutdown did not end in time; what it brings stays hidden for the visibility timeout"
            );
        }
    }
}

/// The objects one event concerns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routed {
    pub objects: Vec<ObjectRef<Guarded>>,
    /// The change is under a shared path only: the objects' own stores did not
    /// change (their last read of them may be reused).
    pub shared_only: bool,
}

/// A reconcile an event asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub object: ObjectRef<Guarded>,
    /// See [`Routed::shared_only`].
    pub shared_only: bool,
}

/// What the consumer needs from the controller.
pub trait Router: Send + Sync + 'static {
    /// The objects a parsed event concerns (and any cache it must invalidate).
    fn route(&self, envelope: &envelope::Envelope) -> Routed;
    /// Whether the object still exists (a deleted one holds no message).
    fn exists(&self, obj: &ObjectRef<Guarded>) -> bool;
}

pub struct Consumer {
    pub sqs: aws_sdk_sqs::Client,
    pub settings: ConsumerSettings,
    pub router: Arc<dyn Router>,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    /// Counts the calls with the stores' (one source for metrics and benchmarks).
    pub gate: CallGate,
    /// Whether the caches the router reads have listed; receiving waits for it.
    pub caches_synced: tokio::sync::watch::Receiver<bool>,
}

/// The queue's client, with the stores' retry policy.
pub fn client(backend_ctx: &BackendContext) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::config::Builder::from(&backend_ctx.sdk).retry_config(backend_ctx.retry.clone()).build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A message being waited on: its receipt handle and whether it was handled.
type Handled = Pin<Box<dyn Future<Output = (String, bool)> + Send>>;
/// A receive in progress (None when it failed), and whether its request has
/// been sent (before that it is waiting for a backoff or the caches).
type Receiving = (Pin<Box<dyn Future<Output = Option<Vec<Message>>> + Send>>, Arc<AtomicBool>);

impl Consumer {
    /// Runs until `shutdown` resolves, then acknowledges what completes within
    /// the grace period and returns.
    pub async fn run(self, trigger: UnboundedSender<Trigger>, shutdown: impl Future<Output = ()>) {
        info!(queue = %self.settings.queue_url, "consuming store-change events");
        let mut waiting: FuturesUnordered<Handled> = FuturesUnordered::new();
        // Receipt handles of the messages in `waiting`.
        let mut pending: HashSet<String> = HashSet::new();
        let mut acknowledged: Vec<String> = Vec::new();
        let mut receiving: Option<Receiving> = None;
        let mut failures = 0u32;
        let mut stop_at: Option<Instant> = None;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            if stop_at.is_none() && receiving.is_none() && waiting.len() < self.settings.max_in_flight {
                receiving = Some(self.poll(failures));
            }
            tokio::select! {
                _ = &mut shutdown, if stop_at.is_none() => {
                    info!(in_flight = waiting.len(), "event consumer stopping: no more receives");
                    stop_at = Some(Instant::now() + self.settings.shutdown_grace);
                    if let Some((poll, sent)) = receiving.take()
                        && sent.load(Ordering::SeqCst)
                    {
                        self.abandon(poll);
                    }
                }
                received = async { receiving.as_mut().expect("guarded").0.as_mut().await }, if receiving.is_some() => {
                    receiving = None;
                    match received {
                        None => failures = failures.saturating_add(1),
                        Some(messages) => {
                            failures = 0;
                            for message in messages {
                                if let Some(handle) = self.accept(message, &trigger, &mut waiting, &mut pending) {
                                    acknowledged.push(handle);
                                }
                            }
                        }
                    }
                }
                Some((handle, handled)) = waiting.next(), if !waiting.is_empty() => {
                    pending.remove(&handle);
                    if handled {
                        acknowledged.push(handle);
                    } else {
                        self.metrics.count_message("unhandled", 1);
                    }
                }
                _ = sleep_until(stop_at), if stop_at.is_some() => break,
            }
            // Acknowledge in batches, but never sit on a handled message.
            while !acknowledged.is_empty() {
                let batch: Vec<String> = acknowledged.drain(..acknowledged.len().min(DELETE_BATCH)).collect();
                self.delete(batch).await;
            }
            if stop_at.is_some() && waiting.is_empty() {
                break;
            }
        }
        self.release_pending(pending).await;
    }

    /// The next receive: after the backoff `failures` call for, once the
    /// caches have listed.
    fn poll(&self, failures: u32) -> Receiving {
        let backoff = backoff(failures);
        let (sqs, settings, gate) = (self.sqs.clone(), self.settings.clone(), self.gate.clone());
        let mut synced = self.caches_synced.clone();
        let sent = Arc::new(AtomicBool::new(false));
        let sending = sent.clone();
        let poll = Box::pin(async move {
            tokio::time::sleep(backoff).await;
            if synced.wait_for(|synced| *synced).await.is_err() {
                // The probes are gone: the controller is stopping.
                std::future::pending::<()>().await;
            }
            sending.store(true, Ordering::SeqCst);
            receive(&sqs, &settings, &gate).await
        });
        (poll, sent)
    }

    /// At the stop: messages whose objects are still reconciling are made
    /// visible again. Their reconciles may still finish here; the next leader
    /// reconciling them again costs less than waiting for them.
    async fn release_pending(&self, pending: HashSet<String>) {
        if pending.is_empty() {
            return;
        }
        info!(left = pending.len(), "event consumer stopped; unhandled messages are made visible for the next leader");
        release(&self.sqs, &self.gate, &self.metrics, &self.settings.queue_url, pending.into_iter().collect()).await;
    }

    /// Lets a long poll cut short by the shutdown finish in the background
    /// and releases what it brings (nothing of it is handled here any more).
    fn abandon(&self, poll: Pin<Box<dyn Future<Output = Option<Vec<Message>>> + Send>>) {
        let (sqs, gate, metrics, queue_url) =
            (self.sqs.clone(), self.gate.clone(), self.metrics.clone(), self.settings.queue_url.clone());
        self.settings.abandoned.push(tokio::spawn(async move {
            let Some(messages) = poll.await else { return };
            let handles: Vec<String> = messages.iter().filter_map(|m| m.receipt_handle().map(String::from)).collect();
            if !handles.is_empty() {
                metrics.count_message("received", handles.len() as u64);
                info!(
                    messages = handles.len(),
                    "the long poll under way at shutdown brought messages; made visible for the next leader"
                );
                release(&sqs, &gate, &metrics, &queue_url, handles).await;
            }
        }));
    }

    /// Parses and dispatches one message. Returns its receipt handle when it
    /// can be deleted right away.
    fn accept(
        &self,
        message: Message,
        trigger: &UnboundedSender<Trigger>,
        waiting: &mut FuturesUnordered<Handled>,
        pending: &mut HashSet<String>,
    ) -> Option<String> {
        let received = Instant::now();
        self.metrics.count_message("received", 1);
        let id = message.message_id().unwrap_or_default().to_string();
        let handle = message.receipt_handle()?.to_string();
        let body = message.body().unwrap_or_default();
        let envelope = match envelope::parse(body) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.metrics.count_message("malformed", 1);
                self.metrics.event_malformed.get_or_create(&MalformedLabels { reason: e.metric_label() }).inc();
                warn!(message_id = %id, reason = %e, "malformed event message; leaving it for the dead-letter queue");
                return None;
            }
        };
        let Routed { objects, shared_only } = self.router.route(&envelope);
        if objects.is_empty() {
            self.metrics.count_message("ignored", 1);
            debug!(message_id = %id, event_id = envelope.id.as_deref(), change = ?envelope.change, "event concerns no TenantConfig");
            return Some(handle);
        }
        debug!(message_id = %id, event_id = envelope.id.as_deref(), objects = objects.len(), "event triggers reconciles");
        self.tracker.expect(&objects, received, sent_at(&message, received));
        for obj in &objects {
            // The controller only stops reading when it shuts down.
            let _ = trigger.unbounded_send(Trigger { object: obj.clone(), shared_only });
        }
        self.metrics.event_triggers.inc_by(objects.len() as u64);
        pending.insert(handle.clone());
        waiting.push(self.handled(id, handle, objects, received));
        None
    }

    /// Resolves once every object of a message has been reconciled since the
    /// message arrived (`true`: it may be deleted), hiding the message again
    /// while they still run, up to [`MAX_VISIBILITY_EXTENSIONS`] times.
    fn handled(&self, id: String, handle: String, objects: Vec<ObjectRef<Guarded>>, received: Instant) -> Handled {
        let (tracker, router, sqs, gate) =
            (self.tracker.clone(), self.router.clone(), self.sqs.clone(), self.gate.clone());
        let (queue_url, visibility) = (self.settings.queue_url.clone(), self.settings.visibility_timeout);
        Box::pin(async move {
            let mut deadline = received + visibility.mul_f64(0.8);
            for extension in 1..=MAX_VISIBILITY_EXTENSIONS + 1 {
                if tracker.wait(&objects, received, deadline, |obj| router.exists(obj)).await {
                    return (handle, true);
                }
                if extension > MAX_VISIBILITY_EXTENSIONS {
                    break;
                }
                let request = sqs
                    .change_message_visibility()
                    .queue_url(&queue_url)
                    .receipt_handle(&handle)
                    .visibility_timeout(i32::try_from(visibility.as_secs()).unwrap_or(i32::MAX))
                    .send();
                let result = gate.call("ChangeMessageVisibility", request).await;
                match result {
                    Ok(_) => {
                        debug!(message_id = %id, extension, "objects still reconciling; message kept hidden");
                        deadline = Instant::now() + visibility.mul_f64(0.8);
                    }
                    Err(e) => {
                        warn!(message_id = %id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not extend a message's visibility; it will be redelivered");
                        break;
                    }
                }
            }
            (handle, false)
        })
    }

    async fn delete(&self, handles: Vec<String>) {
        let entries: Vec<DeleteMessageBatchRequestEntry> = handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let request =
            self.sqs.delete_message_batch().queue_url(&self.settings.queue_url).set_entries(Some(entries)).send();
        let result = self.gate.call("DeleteMessageBatch", request).await;
        match result {
            Ok(output) => {
                self.metrics.count_message("acked", output.successful().len() as u64);
                for failed in output.failed() {
                    // The message comes back and is handled again: harmless.
                    warn!(code = failed.code(), message = failed.message(), "could not delete an event message");
                }
            }
            Err(e) => {
                warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), count = handles.len(), "could not delete event messages; they will be redelivered");
            }
        }
    }
}

/// Makes messages visible again at once (visibility timeout 0), for another
/// consumer to handle.
async fn release(sqs: &aws_sdk_sqs::Client, gate: &CallGate, metrics: &Metrics, queue_url: &str, handles: Vec<String>) {
    for batch in handles.chunks(DELETE_BATCH) {
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = batch
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let request = sqs.change_message_visibility_batch().queue_url(queue_url).set_entries(Some(entries)).send();
        match gate.call("ChangeMessageVisibilityBatch", request).await {
            Ok(output) => {
                metrics.count_message("released", output.successful().len() as u64);
                for failed in output.failed() {
                    warn!(
                        code = failed.code(),
                        message = failed.message(),
                        "could not release an event message; it is redelivered after its visibility timeout"
                    );
                }
            }
            Err(e) => {
                warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), count = batch.len(), "could not release event messages; they are redelivered after their visibility timeout");
            }
        }
    }
}

async fn receive(sqs: &aws_sdk_sqs::Client, settings: &ConsumerSettings, gate: &CallGate) -> Option<Vec<Message>> {
    let request = sqs
        .receive_message()
        .queue_url(&settings.queue_url)
        .max_number_of_messages(MAX_MESSAGES)
        .wait_time_seconds(WAIT_TIME_SECONDS)
        .visibility_timeout(settings.visibility_timeout.as_secs().clamp(1, 43_200) as i32)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send();
    match gate.call("ReceiveMessage", request).await {
        Ok(output) => Some(output.messages.unwrap_or_default()),
        Err(e) => {
            warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "receiving events failed; retrying with backoff");
            None
        }
    }
}

/// When the message entered the queue, as an `Instant` (for the lag metric);
/// the receive time when SQS did not say.
fn sent_at(message: &Message, received: Instant) -> Instant {
    let sent_ms = message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|v| v.parse::<u64>().ok());
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    match sent_ms {
        Some(sent) if sent <= now_ms => received.checked_sub(Duration::from_millis(now_ms - sent)).unwrap_or(received),
        _ => received,
    }
}

fn backoff(failures: u32) -> Duration {
    if failures == 0 { Duration::ZERO } else { Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30)) }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(16));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }

    #[test]
    fn sent_timestamp_becomes_an_earlier_instant() {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let message = Message::builder()
            .attributes(MessageSystemAttributeName::SentTimestamp, (now_ms - 1500).to_string())
            .build();
        let received = Instant::now();
        let sent = sent_at(&message, received);
        let ago = received - sent;
        assert!(ago >= Duration::from_millis(1400) && ago < Duration::from_secs(3), "{ago:?}");
        assert_eq!(sent_at(&Message::builder().build(), received), received);
    }
}
