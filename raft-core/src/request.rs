//! The Raft payload: a batch of client write requests, and one result per request.
//!
//! Batching lives in the payload because openraft 0.9.25 appends (and fsyncs) every
//! `client_write` on its own: one entry per batch turns one fsync into many acknowledged writes.
//! A request that fails a state check (e.g. `ignore_value` on a missing key) fails alone; the
//! rest of the batch applies.
//!
//! etcd requests travel as their protobuf encoding inside the bincode-encoded entry, so the
//! entry format follows the wire format with no second schema to keep in sync.

use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RequestOp, TxnRequest, TxnResponse,
};
use kv_api::EtcdError;
use serde::{Deserialize, Serialize};

/// One client write, as proposed through Raft.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WriteRequest {
    Put(#[serde(with = "pb")] PutRequest),
    DeleteRange(#[serde(with = "pb")] DeleteRangeRequest),
    Txn(#[serde(with = "pb")] TxnRequest),
    Compact(#[serde(with = "pb")] CompactionRequest),
    /// A member publishes its name and client URLs after it starts (as etcd does).
    PublishMember(MemberAttrs),
    /// Grants lease `id` (chosen before proposing) with `ttl` seconds.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes lease `id` (asked for, or expired as the leader judged): its keys are deleted.
    LeaseRevoke {
        id: i64,
    },
    /// The leader's lease clock: `elapsed_ms` since its previous checkpoint, and the remaining
    /// TTL (ms) of the leases renewed or granted since then (see [`crate::mvcc::lease`]). A new
    /// leader starts each lease from what these say it has left.
    LeaseCheckpoint {
        elapsed_ms: i64,
        remaining: Vec<(i64, i64)>,
    },
}

impl WriteRequest {
    /// Approximate encoded size, used to bound batches.
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        match self {
            WriteRequest::Put(r) => r.encoded_len(),
            WriteRequest::DeleteRange(r) => r.encoded_len(),
            WriteRequest::Txn(r) => r.encoded_len(),
            WriteRequest::Compact(r) => r.encoded_len(),
            WriteRequest::PublishMember(m) => m.name.len() + m.client_urls.iter().map(String::len).sum::<usize>() + 16,
            WriteRequest::LeaseGrant { .. } | WriteRequest::LeaseRevoke { .. } => 16,
            WriteRequest::LeaseCheckpoint { remaining, .. } => 16 * remaining.len() + 16,
        }
    }

    /// Whether the response is small whatever the store holds: no previous values and no
    /// ranges. A follower batches only these into one Forward RPC, so a batch's reply stays far
    /// below the peer message limit; a request that may answer with stored data (`prev_kv`, a
    /// Txn with a range) travels alone and its reply is limited only by that one request.
    pub fn answer_is_small(&self) -> bool {
        match self {
            WriteRequest::Put(r) => !r.prev_kv,
            WriteRequest::DeleteRange(r) => !r.prev_kv,
            WriteRequest::Txn(t) => t.success.iter().chain(&t.failure).all(op_answer_is_small),
            WriteRequest::Compact(_)
            | WriteRequest::PublishMember(_)
            | WriteRequest::LeaseGrant { .. }
            | WriteRequest::LeaseRevoke { .. }
            | WriteRequest::LeaseCheckpoint { .. } => true,
        }
    }
}

fn op_answer_is_small(op: &RequestOp) -> bool {
    match &op.request {
        Some(Request::RequestPut(r)) => !r.prev_kv,
        Some(Request::RequestDeleteRange(r)) => !r.prev_kv,
        Some(Request::RequestTxn(t)) => t.success.iter().chain(&t.failure).all(op_answer_is_small),
        Some(Request::RequestRange(_)) | None => false,
    }
}

/// The successful outcome of one [`WriteRequest`]. Headers carry only the revision; the serving
/// member fills in cluster id, member id and term.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WriteResponse {
    Put(#[serde(with = "pb")] PutResponse),
    DeleteRange(#[serde(with = "pb")] DeleteRangeResponse),
    Txn(#[serde(with = "pb")] TxnResponse),
    Compact(#[serde(with = "pb")] CompactionResponse),
    PublishMember,
    LeaseGrant(#[serde(with = "pb")] LeaseGrantResponse),
    LeaseRevoke(#[serde(with = "pb")] LeaseRevokeResponse),
    LeaseCheckpoint,
}

/// Outcome of one request: a response, or the etcd error it failed with.
pub type WriteResult = Result<WriteResponse, EtcdError>;

/// A member's published attributes (etcd's member "attributes").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
}

/// The Raft log payload `D`: a batch of write requests, kept encoded (the bincode encoding of
/// `Vec<WriteRequest>`).
///
/// Why encoded: a leader reads every entry back from its log once to apply it and once per
/// follower to replicate it, and a follower stores what it receives. With decoded requests each
/// of those steps decoded and re-encoded every protobuf message of the batch; a catching-up
/// follower's AppendEntries of a few hundred full batches then took longer to build than
/// openraft's AppendEntries timeout (the heartbeat interval), so it was rebuilt and resent for
/// ever and the cluster stopped committing. Encoded, those steps copy bytes; the requests are
/// decoded once per member, when applied.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestBatch {
    #[serde(with = "serde_bytes")]
    encoded: Vec<u8>,
}

impl RequestBatch {
    /// Encodes `requests` as one batch.
    pub fn new(requests: &[WriteRequest]) -> RequestBatch {
        RequestBatch { encoded: bincode::serialize(requests).expect("in-memory encoding of requests cannot fail") }
    }

    /// The batch's requests, decoded. Fails only on a corrupt entry.
    pub fn requests(&self) -> Result<Vec<WriteRequest>, bincode::Error> {
        crate::codec::decode(&self.encoded)
    }

    /// Size of the encoded batch.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }
}

impl std::fmt::Debug for RequestBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestBatch({} bytes)", self.encoded.len())
    }
}

/// openraft's log lines name an entry's payload by this.
impl std::fmt::Display for RequestBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The Raft response `R`: one result per request of the entry's batch (empty for blank and
/// membership entries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseBatch {
    pub results: Vec<WriteResult>,
}

/// serde for prost messages: the protobuf encoding as a byte string.
mod pb {
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<M: Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&m.encode_to_vec())
    }

    pub fn deserialize<'de, M: Message + Default, D: Deserializer<'de>>(d: D) -> Result<M, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_through_bincode() {
        let requests = vec![
            WriteRequest::Put(PutRequest { key: b"k".to_vec(), value: vec![0, 1, 2], ..Default::default() }),
            WriteRequest::PublishMember(MemberAttrs { id: 7, name: "n1".into(), client_urls: vec!["u".into()] }),
        ];
        let batch = RequestBatch::new(&requests);
        let bytes = bincode::serialize(&batch).unwrap();
        let back = bincode::deserialize::<RequestBatch>(&bytes).unwrap();
        assert_eq!(back.requests().unwrap(), requests);
        let resp = ResponseBatch { results: vec![Err(EtcdError::KeyNotFound), Ok(WriteResponse::PublishMember)] };
        let bytes = bincode::serialize(&resp).unwrap();
        assert_eq!(bincode::deserialize::<ResponseBatch>(&bytes).unwrap(), resp);
    }

    #[test]
    fn only_answers_without_stored_data_are_small() {
        use kv_api::etcdserverpb::{RangeRequest, TxnRequest};
        let put =
            |prev_kv| RequestOp { request: Some(Request::RequestPut(PutRequest { prev_kv, ..Default::default() })) };
        let range = RequestOp { request: Some(Request::RequestRange(RangeRequest::default())) };
        let txn = |success: Vec<RequestOp>| TxnRequest { success, ..Default::default() };
        assert!(WriteRequest::Put(PutRequest::default()).answer_is_small());
        assert!(!WriteRequest::Put(PutRequest { prev_kv: true, ..Default::default() }).answer_is_small());
        assert!(
            !WriteRequest::DeleteRange(DeleteRangeRequest { prev_kv: true, ..Default::default() }).answer_is_small()
        );
        assert!(WriteRequest::Txn(txn(vec![put(false), put(false)])).answer_is_small());
        assert!(!WriteRequest::Txn(txn(vec![put(false), range.clone()])).answer_is_small());
        assert!(!WriteRequest::Txn(txn(vec![put(true)])).answer_is_small());
        let nested = RequestOp { request: Some(Request::RequestTxn(txn(vec![range]))) };
        assert!(!WriteRequest::Txn(TxnRequest { failure: vec![nested], ..Default::default() }).answer_is_small());
    }
}
