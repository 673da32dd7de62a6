//! What clients saw: one [`Record`] per operation on a register key, at the client's read
//! level, with its call and return times and its outcome.

use std::time::Duration;

/// The bound of the bounded-staleness clients.
pub const STALENESS_BOUND: Duration = Duration::from_millis(300);

/// A client's read level; its writes always go through Raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Level {
    Linearizable,
    Lease,
    Session,
    Bounded,
    Serializable,
}

/// One client operation: its call and return times (ns since the workload began) and what it
/// did. `ret == None`: no answer (timeout or error), so a write's effect is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub client: u32,
    pub level: Level,
    /// The member the request went to (index into the cluster's members).
    pub member: usize,
    pub key: String,
    pub call: i64,
    pub ret: Option<i64>,
    pub op: Op,
}

/// Values are unique per history: client × 1,000,000 + sequence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// `revision`: the revision the put was acknowledged at.
    Put { value: u64, revision: Option<i64> },
    /// Put `value` if the key holds `expect` (None: the key is absent). `outcome`: whether it
    /// succeeded and the response's revision.
    Cas { expect: Option<u64>, value: u64, outcome: Option<(bool, i64)> },
    /// An answered read: the value and its mod revision (None: absent), the response's header
    /// revision, and the `min_revision` sent (session reads).
    Get { seen: Option<(u64, i64)>, revision: i64, min_revision: i64 },
}

impl Record {
    /// The value and revision of a write that is known to have taken effect.
    pub fn acked_write(&self) -> Option<(u64, i64)> {
        match self.op {
            Op::Put { value, revision: Some(r) } => Some((value, r)),
            Op::Cas { value, outcome: Some((true, r)), .. } => Some((value, r)),
            _ => None,
        }
    }

    /// The value a write would put, known or not to have taken effect.
    pub fn written_value(&self) -> Option<u64> {
        match self.op {
            Op::Put { value, .. } | Op::Cas { value, .. } => Some(value),
            Op::Get { .. } => None,
        }
    }
}

/// A stored value as written by the workload; anything else is reported as u64::MAX, which no
/// write ever puts, so the checks flag it.
pub fn parse_value(v: &[u8]) -> u64 {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}
