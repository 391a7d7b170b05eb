//! Replica traffic batching: per peer, replica reads, writes and purges queue
//! up and travel together in one [`Route::Batch`] call.
//!
//! Each peer gets a sender task. It takes whatever is queued (at most
//! [`MAX_BATCH`] operations or [`MAX_BATCH_BYTES`]) and sends it; while that
//! batch is in the air, new operations wait and form the next one (group
//! commit for the network: the batch grows with load and with the peer's
//! latency, flush time included). An idle cluster therefore sends every
//! operation at once, alone, and a busy one sends fewer, larger requests:
//! on loopback, per-request overhead (syscalls, HTTP framing, task
//! switches) was most of a replica write's cost. One batch in the air per
//! peer measured 5-10 % faster than two (bench/NOTES.md).
//!
//! The sender sends on the transport's [`PeerLink`] to the peer when it has
//! one (over HTTP: a connection the sender task drives itself, so a reply
//! reaches the callers without passing through another task), else through
//! [`Transport::call`].
//!
//! Sender tasks run under the batcher's own tracker and token, cancelled
//! last at shutdown (after the leave hand-off, which needs them). A failed
//! batch hands its [`TransportError`] to every operation in it, kind intact.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{self, BatchReply};
use super::{PeerLink, Route, Target, Transport, TransportError};

/// Most operations in one batch.
pub const MAX_BATCH: usize = 256;
/// A batch stops growing past this many bytes (one larger operation still
/// travels, alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Operations that may wait for one peer before callers wait to enqueue.
const QUEUE: usize = 4096;

struct Job {
    op: Bytes,
    reply: oneshot::Sender<Result<BatchReply, TransportError>>,
}

/// Per-peer queues over a [`Transport`].
pub struct Batcher {
    transport: Arc<dyn Transport>,
    timeout: Duration,
    queues: Mutex<HashMap<(String, String), mpsc::Sender<Job>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Batcher {
    /// Batches over `transport`, each call bounded by `timeout`.
    pub fn new(transport: Arc<dyn Transport>, timeout: Duration) -> Self {
        Self {
            transport,
            timeout,
            queues: Mutex::default(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// Queues one encoded operation for `to` and waits for its reply.
    pub async fn call(&self, to: Target<'_>, op: Bytes) -> Result<BatchReply, TransportError> {
        if self.cancel.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let tx = {
            let mut queues = self.queues.lock().expect("queues lock");
            let slot = (to.id.to_string(), to.address.to_string());
            match queues.get(&slot) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    let sender = Sender {
                        link: self.transport.link(to),
                        transport: self.transport.clone(),
                        timeout: self.timeout,
                        id: slot.0.clone(),
                        address: slot.1.clone(),
                    };
                    self.tasks.spawn(sender.run(rx, self.cancel.clone()));
                    queues.insert(slot, tx.clone());
                    tx
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        tx.send(Job { op, reply }).await.map_err(|_| TransportError::Closed)?;
        answer.await.map_err(|_| TransportError::Closed)?
    }

    /// Stops every sender (queued operations answer [`TransportError::Closed`])
    /// and waits up to `deadline` for batches in the air.
    pub async fn shutdown(&self, deadline: Duration) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(deadline, self.tasks.wait()).await;
    }
}

/// The sender task of one peer.
struct Sender {
    link: Option<Box<dyn PeerLink>>,
    transport: Arc<dyn Transport>,
    timeout: Duration,
    id: String,
    address: String,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>, cancel: CancellationToken) {
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => tokio::select! {
                    _ = cancel.cancelled() => break,
                    j = rx.recv() => match j {
                        Some(j) => j,
                        None => break,
                    },
                },
            };
            // Everything that queued while the last batch was in the air
            // goes along.
            let mut bytes = first.op.len();
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) if bytes + j.op.len() > MAX_BATCH_BYTES => {
                        carry = Some(j);
                        break;
                    }
                    Ok(j) => {
                        bytes += j.op.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            // A batch in the air finishes (bounded by the timeout) even when
            // cancelled; queued ones are dropped with the receiver, which
            // answers their callers `Closed`.
            self.send(jobs).await;
        }
    }

    async fn send(&mut self, jobs: Vec<Job>) {
        let ops: Vec<Bytes> = jobs.iter().map(|j| j.op.clone()).collect();
        let body = wire::batch_body(&ops);
        let result = match &mut self.link {
            Some(link) => link.call(Route::Batch, body, self.timeout).await,
            None => {
                let to = Target { id: &self.id, address: &self.address };
                self.transport.call(to, Route::Batch, body, self.timeout).await
            }
        };
        let replies = result.and_then(|b| wire::decode::<Vec<BatchReply>>(&b).ok_or(TransportError::Malformed));
        match replies {
            Ok(replies) if replies.len() == jobs.len() => {
                for (job, reply) in jobs.into_iter().zip(replies) {
                    let _ = job.reply.send(Ok(reply));
                }
            }
            Ok(_) => {
                for job in jobs {
                    let _ = job.reply.send(Err(TransportError::Malformed));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
