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
    /// Per peer id: the address its queue sends to, and the queue.
    queues: Mutex<HashMap<String, (String, mpsc::Sender<Job>)>>,
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
            match queues.get(to.id) {
                Some((address, tx)) if address == to.address && !tx.is_closed() => tx.clone(),
                // New, or at a new address: a new queue. The old one's sender
                // sends what it holds and ends.
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    let sender = Sender {
                        link: self.transport.link(to),
                        transport: self.transport.clone(),
                        timeout: self.timeout,
                        id: to.id.to_string(),
                        address: to.address.to_string(),
                    };
                    self.tasks.spawn(sender.run(rx, self.cancel.clone()));
                    queues.insert(to.id.to_string(), (to.address.to_string(), tx.clone()));
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
                    // Once cancelled, no new batch leaves (queued operations
                    // answer `Closed` when the receiver is dropped).
                    biased;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::transport::wire::BatchOp;
    use crate::transport::BoxFuture;

    /// Records each batch (address, its keys) and answers every operation
    /// `Written`; each call first takes a permit from `gate`.
    struct Recorder {
        gate: Arc<Semaphore>,
        seen: StdMutex<Vec<(String, Vec<Vec<u8>>)>>,
    }

    impl Transport for Recorder {
        fn call<'a>(
            &'a self,
            to: Target<'a>,
            _route: Route,
            body: Bytes,
            _timeout: Duration,
        ) -> BoxFuture<'a, Result<Bytes, TransportError>> {
            Box::pin(async move {
                let ops: Vec<BatchOp> = wire::decode(&body).expect("a batch");
                let keys = ops
                    .iter()
                    .map(|op| match op {
                        BatchOp::Digest { key } => key.clone(),
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect::<Vec<_>>();
                self.seen.lock().unwrap().push((to.address.to_string(), keys));
                self.gate.acquire().await.expect("gate open").forget();
                let replies: Vec<BatchReply> = ops.iter().map(|_| BatchReply::Written).collect();
                Ok(Bytes::from(wire::encode(&replies)))
            })
        }

        fn forward<'a>(
            &'a self,
            _to: Target<'a>,
            _req: super::super::ForwardRequest,
            _timeout: Duration,
        ) -> BoxFuture<'a, Result<super::super::ForwardResponse, TransportError>> {
            Box::pin(async { Err(TransportError::Closed) })
        }
    }

    fn recorder() -> (Arc<Recorder>, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (Arc::new(Recorder { gate: gate.clone(), seen: StdMutex::default() }), gate)
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn operations_queued_while_a_batch_is_in_the_air_travel_together_next() {
        let (rec, gate) = recorder();
        let batcher = Arc::new(Batcher::new(rec.clone(), Duration::from_secs(10)));
        let call = |key: &'static [u8]| {
            let b = batcher.clone();
            tokio::spawn(async move { b.call(Target { id: "n2", address: "http://a" }, wire::digest_op(key)).await })
        };
        let first = call(b"k0");
        until("the first batch is sent", || rec.seen.lock().unwrap().len() == 1).await;
        let rest: Vec<_> = [b"k1", b"k2", b"k3"].into_iter().map(|k| call(k)).collect();
        // Let them queue behind the batch in the air, then release both.
        until("three operations queue", || {
            let queues = batcher.queues.lock().unwrap();
            let tx = &queues["n2"].1;
            tx.max_capacity() - tx.capacity() == 3
        })
        .await;
        gate.add_permits(2);
        assert_eq!(first.await.unwrap(), Ok(BatchReply::Written));
        for r in rest {
            assert_eq!(r.await.unwrap(), Ok(BatchReply::Written));
        }
        let seen = rec.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].1, vec![b"k0".to_vec()]);
        let mut second = seen[1].1.clone();
        second.sort();
        assert_eq!(second, vec![b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()]);
    }

    #[tokio::test]
    async fn a_peer_at_a_new_address_gets_a_new_queue_and_the_old_one_finishes() {
        let (rec, gate) = recorder();
        let batcher = Arc::new(Batcher::new(rec.clone(), Duration::from_secs(10)));
        let b = batcher.clone();
        let old =
            tokio::spawn(
                async move { b.call(Target { id: "n2", address: "http://old" }, wire::digest_op(b"a")).await },
            );
        until("the old address's batch is sent", || rec.seen.lock().unwrap().len() == 1).await;
        let b = batcher.clone();
        let new =
            tokio::spawn(
                async move { b.call(Target { id: "n2", address: "http://new" }, wire::digest_op(b"b")).await },
            );
        until("the new address's batch is sent", || rec.seen.lock().unwrap().len() == 2).await;
        gate.add_permits(2);
        assert_eq!(old.await.unwrap(), Ok(BatchReply::Written));
        assert_eq!(new.await.unwrap(), Ok(BatchReply::Written));
        let addresses: Vec<String> = rec.seen.lock().unwrap().iter().map(|(a, _)| a.clone()).collect();
        assert_eq!(addresses, ["http://old", "http://new"]);
        assert_eq!(batcher.queues.lock().unwrap().len(), 1, "one queue per peer id");
        // The old queue's sender ends once its last batch was answered.
        until("the old sender ends", || batcher.tasks.len() == 1).await;
    }
}
