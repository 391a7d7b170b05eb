//! An in-memory network of real nodes, for tests and simulations: real
//! `Node`s (real storage, coordinator, replica access, workers' round
//! functions) whose peer traffic goes through [`MemNet`] instead of HTTP,
//! straight into [`crate::rpc::handle`] of the node addressed.
//!
//! Links between chosen pairs can be cut, made to lose replies or delayed
//! (as tikv/raft-rs's harness network does), and traffic is counted per
//! route in bytes, so protocols can be tested deterministically, without
//! processes or sockets, beside the real-process tests.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;

use crate::config::Config;
use crate::membership::Digest;
use crate::node::{Node, OpenError};
use crate::ownership::Ownership;
use crate::rpc::{self, RpcError};
use crate::transport::wire::GossipMessage;
use crate::transport::{BoxFuture, ForwardRequest, ForwardResponse, Route, Target, Transport, TransportError};

/// Why a node could not be opened on the network.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The flags given do not parse.
    #[error("flags: {0}")]
    Flags(#[from] clap::Error),
    /// The node did not open.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// What happens to messages from one node to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not delivered (a refused connection).
    Down,
    /// Delivered and applied, but the answer is lost (a timeout).
    ReplyLost,
    /// Delivered after this long (a timeout if that is past the caller's).
    Delay(Duration),
}

/// Messages and bytes that crossed the network on one route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Calls made.
    pub calls: u64,
    /// Request body bytes.
    pub sent: u64,
    /// Answer body bytes.
    pub received: u64,
}

impl Traffic {
    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.sent + self.received
    }
}

#[derive(Default)]
struct State {
    /// Nodes by address.
    nodes: HashMap<String, Weak<Node>>,
    /// Faults by (from id, to id).
    links: HashMap<(String, String), Link>,
    traffic: BTreeMap<&'static str, Traffic>,
}

/// The in-memory network.
#[derive(Default)]
pub struct MemNet {
    state: Mutex<State>,
}

/// The address of node `id` on a [`MemNet`].
pub fn address_of(id: &str) -> String {
    format!("http://{id}.mem")
}

impl MemNet {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Opens a node `id` on this network with its data in `dir` and `extra`
    /// flags.
    pub fn open(self: &Arc<Self>, id: &str, dir: &Path, extra: &[&str]) -> Result<Arc<Node>, HarnessError> {
        let address = address_of(id);
        let dir = dir.to_string_lossy().into_owned();
        let mut args = vec!["dynakv", "--node-id", id, "--data-dir", &dir, "--advertise", &address];
        args.extend_from_slice(extra);
        let cfg = Config::try_parse_from(args)?;
        let transport = Arc::new(MemTransport { net: self.clone(), from: id.to_string() });
        let node = Node::open(cfg, transport)?;
        self.state.lock().expect("net lock").nodes.insert(address, Arc::downgrade(&node));
        Ok(node)
    }

    /// Sets what happens to messages from `from` to `to`.
    pub fn set_link(&self, from: &str, to: &str, link: Link) {
        self.state.lock().expect("net lock").links.insert((from.to_string(), to.to_string()), link);
    }

    /// Cuts `id` off from every node, both ways.
    pub fn isolate(&self, id: &str, others: &[&str]) {
        for o in others {
            self.set_link(id, o, Link::Down);
            self.set_link(o, id, Link::Down);
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.state.lock().expect("net lock").links.clear();
    }

    /// Traffic on `route` so far.
    pub fn traffic(&self, route: Route) -> Traffic {
        self.state.lock().expect("net lock").traffic.get(route.path()).copied().unwrap_or_default()
    }

    /// Forgets the traffic counted so far.
    pub fn reset_traffic(&self) {
        self.state.lock().expect("net lock").traffic.clear();
    }

    fn route(&self, from: &str, to: &Target<'_>) -> (Option<Link>, Option<Arc<Node>>) {
        let st = self.state.lock().expect("net lock");
        let link = st.links.get(&(from.to_string(), to.id.to_string())).copied();
        (link, st.nodes.get(to.address).and_then(Weak::upgrade))
    }

    fn count(&self, route: Route, sent: usize, received: usize) {
        let mut st = self.state.lock().expect("net lock");
        let t = st.traffic.entry(route.path()).or_default();
        t.calls += 1;
        t.sent += sent as u64;
        t.received += received as u64;
    }
}

/// Makes every node know every other as alive, as gossip would.
pub fn introduce(nodes: &[Arc<Node>]) {
    let digests: Vec<Digest> = nodes.iter().flat_map(|n| n.gossip_message().members).collect();
    for n in nodes {
        let msg = GossipMessage { from: "harness".into(), partitions: n.cfg().partitions, members: digests.clone() };
        n.accept_gossip(&msg).expect("valid members");
        // Each was opened alone, on a new data dir, and now hears of the
        // others, so it verifies what it took for itself before vouching
        // for it. They are a new, empty cluster formed at once: what each
        // holds is all there is, as the transfer worker (not run here)
        // would find by comparing with the others.
        n.update_ownership(|o| *o = Ownership::alone(n.cfg().partitions));
    }
}

/// One node's end of a [`MemNet`].
struct MemTransport {
    net: Arc<MemNet>,
    from: String,
}

impl Transport for MemTransport {
    fn call<'a>(
        &'a self,
        to: Target<'a>,
        route: Route,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let (link, node) = self.net.route(&self.from, &to);
            match link {
                Some(Link::Down) => {
                    return Err(TransportError::Connect(format!("link {} -> {} is down", self.from, to.id)))
                }
                Some(Link::Delay(d)) if d >= timeout => {
                    tokio::time::sleep(timeout).await;
                    return Err(TransportError::Timeout(timeout));
                }
                Some(Link::Delay(d)) => tokio::time::sleep(d).await,
                _ => {}
            }
            let node = node.ok_or_else(|| TransportError::Connect(format!("nobody at {}", to.address)))?;
            let answer = rpc::handle(&node, route, &body).await;
            let received = answer.as_ref().map(Bytes::len).unwrap_or(0);
            self.net.count(route, body.len(), received);
            if link == Some(Link::ReplyLost) {
                return Err(TransportError::Timeout(timeout));
            }
            answer.map_err(|e| match e {
                RpcError::InvalidBody(_) => TransportError::Status(400),
                RpcError::MembershipRefused(why) => TransportError::Refused(why),
                RpcError::HintBacklogFull => TransportError::Status(503),
                RpcError::Storage(_) => TransportError::Status(500),
            })
        })
    }

    fn forward<'a>(
        &'a self,
        _to: Target<'a>,
        _req: ForwardRequest,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<ForwardResponse, TransportError>> {
        // Client requests are relayed as HTTP; in memory the caller
        // coordinates itself, as it does when no replica answers.
        Box::pin(async { Err(TransportError::Connect("no client forwarding in memory".into())) })
    }
}

#[cfg(test)]
mod tests;
