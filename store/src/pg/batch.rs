//! The batchers' queue (group commit, group submit): callers send into a channel, and a
//! batcher takes what waits as one batch, tenants in turn (`crate::fair::FairQueue`), so a
//! tenant's flood does not fill every transaction ahead of another tenant's write (W6).

use crate::fair::FairQueue;
use crate::{Result, StoreError};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Batchers of each kind (group commit, group submit) running at once, each with its
/// own pooled connection: one transaction can be in its WAL flush while the next is
/// being validated and written, and the server's own group commit can share one WAL
/// flush between them. At most a quarter of the pool, so with both kinds busy claims,
/// heartbeats and reads still find half of it. (Measured on a 2-core machine with local
/// PostgreSQL, W1 with one-statement appends, back to back: 4 in flight against 2 gave
/// 5,031 and 8,046 steps/s against 2,223 and 3,830 at C=16, 8,231 and 11,295 against 7,725
/// and 9,775 at C=64, while a flush took several milliseconds: with 2, an append arriving
/// while both transactions flush waits for one to finish, then for its own.)
pub(super) fn batchers(pool_size: usize) -> usize {
    IN_FLIGHT.min(pool_size / 4).max(1)
}

const IN_FLIGHT: usize = 4;

/// A batcher's channel: where callers send (at most `capacity` waiting before they wait to
/// enqueue), and the fair queue batchers take from.
pub(super) fn channel<T>(
    capacity: usize,
    queue: FairQueue<T>,
) -> (tokio::sync::mpsc::Sender<T>, Arc<FairChannel<T>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (tx, Arc::new(FairChannel::new(rx, queue)))
}

/// Sends `make(reply)` to the batcher `what` and waits for its answer. A batcher that
/// stopped before answering leaves the outcome unknown.
pub(super) async fn ask<T, R>(
    batcher: &tokio::sync::mpsc::Sender<T>,
    what: &str,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<R>>) -> T,
) -> Result<R> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    batcher
        .send(make(reply))
        .await
        .map_err(|_| StoreError::Backend(format!("{what} batcher has stopped")))?;
    answer.await.map_err(|_| {
        StoreError::Backend(format!(
            "{what} batcher stopped before answering; outcome unknown"
        ))
    })?
}

/// A batcher's queue: what callers sent, and what waits its turn (`FairQueue`); for a
/// queue `sharing_batches`, also the tenants of batches that finished since a batcher
/// last looked (kept outside the lock, which a waiting batcher holds).
pub(super) struct FairChannel<T> {
    queue: tokio::sync::Mutex<(tokio::sync::mpsc::Receiver<T>, FairQueue<T>)>,
    finished: Mutex<Vec<Arc<str>>>,
    batch_done: Notify,
}

impl<T> FairChannel<T> {
    pub(super) fn new(rx: tokio::sync::mpsc::Receiver<T>, queue: FairQueue<T>) -> Self {
        FairChannel {
            queue: tokio::sync::Mutex::new((rx, queue)),
            finished: Mutex::new(Vec::new()),
            batch_done: Notify::new(),
        }
    }

    /// A batch of a queue `sharing_batches` is done: its tenants may be served again.
    pub(super) fn finished(&self, tenants: Vec<Arc<str>>) {
        if tenants.is_empty() {
            return;
        }
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(tenants);
        self.batch_done.notify_one();
    }
}

/// The next batch of a batcher (group commit, group submit) and its tenants: waits for
/// one item if none waits (or, on a queue `sharing_batches`, until a tenant with queued
/// items has no batch in flight), takes everything else already sent, and returns up to
/// `max`, tenants in turn. `None` once every sender is gone.
pub(super) async fn next_fair_batch<T>(
    channel: &FairChannel<T>,
    tenant: impl Fn(&T) -> Option<Arc<str>>,
    max: usize,
) -> Option<(Vec<T>, Vec<Arc<str>>)> {
    let mut guard = channel.queue.lock().await;
    let (rx, waiting) = &mut *guard;
    loop {
        let done = std::mem::take(&mut *channel.finished.lock().unwrap_or_else(|e| e.into_inner()));
        waiting.finished(done);
        while let Ok(item) = rx.try_recv() {
            waiting.push(tenant(&item), item);
        }
        let (batch, tenants) = waiting.next_batch_with_tenants(max);
        if !batch.is_empty() {
            return Some((batch, tenants));
        }
        // Nothing to serve yet: a new item, or a batch in flight finishing, may change it.
        tokio::select! {
            item = rx.recv() => {
                let item = item?;
                waiting.push(tenant(&item), item);
            }
            _ = channel.batch_done.notified() => {}
        }
    }
}

/// Why a batch's transaction failed. `unwritten`: it certainly wrote nothing (it failed
/// before COMMIT was sent, or the server answered with an error, which rolls back).
pub(super) struct TxFailed {
    pub(super) error: StoreError,
    pub(super) unwritten: bool,
}

impl From<StoreError> for TxFailed {
    fn from(error: StoreError) -> Self {
        TxFailed {
            error,
            unwritten: true,
        }
    }
}
