//! The client-facing etcd v3 services. Each handler validates, settles consistency or proposes
//! through the node, and fills the response header; none touches storage directly.

pub mod alarms;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod queue;
pub mod recipe;
pub mod watch;

use kv_api::etcdserverpb::ResponseHeader;
use kv_api::Consistency;
use raft_core::engine::Engine;
use raft_core::mvcc::validate::Limits;
use raft_core::Node;

/// What every service needs: the node, the limits and this member's identity.
pub struct Ctx<E: Engine> {
    pub node: Node<E>,
    pub limits: Limits,
    pub cluster_id: u64,
    /// This member's alarms (in memory only; see [`alarms`]).
    pub alarms: alarms::Alarms,
    /// Turns true when the member starts to shut down: long-lived streams (watches) end then,
    /// or the drain would wait for them for ever.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

impl<E: Engine> Ctx<E> {
    /// etcd's "request is too large" for a request over `--max-request-bytes`, checked before
    /// anything is proposed (a write's request becomes part of a Raft entry).
    pub fn check_size(&self, m: &impl prost::Message) -> Result<(), tonic::Status> {
        raft_core::mvcc::validate::size(m.encoded_len(), &self.limits).map_err(crate::error::invalid)
    }

    /// A header as etcd fills it: this member's identity and term, and `revision` (0 = current).
    pub fn header(&self, revision: i64, served: Option<Consistency>) -> ResponseHeader {
        let term = self.node.current_term();
        let revision = if revision == 0 { self.node.store().revision() } else { revision };
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.node.id(),
            revision,
            raft_term: term,
            served_consistency: served.map_or(0, |c| c as i32),
        }
    }

    /// Completes a header produced by the state machine (which knows only the revision).
    pub fn fill(&self, h: &mut Option<ResponseHeader>, served: Option<Consistency>) {
        let revision = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.header(revision, served));
    }
}
