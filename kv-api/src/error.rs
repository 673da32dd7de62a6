//! The etcd errors raftkv returns, each with etcd's exact message and gRPC code.
//!
//! Stock etcd clients recognise errors by their message text, byte for byte, so the text lives
//! here once and both directions use it: [`EtcdError::to_status`] on the server,
//! [`EtcdError::from_status`] in clients.

use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

/// An error with etcd's meaning. Variants that have an etcd counterpart use its text verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    KeyNotProvided,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyTxnOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    ServerStopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// An invalid value in a raftkv extension field (no etcd counterpart).
    #[error("raftkv: {0}")]
    InvalidArgument(String),
    /// A read this member cannot serve at the level asked for right now (lease expired, too far
    /// behind, revision not reached); another member, or later, may serve it.
    #[error("raftkv: {0}")]
    Unavailable(String),
    /// A failure with no etcd counterpart; goes out as code Unknown with the raw text, as etcd does.
    #[error("{0}")]
    Other(String),
}

/// Every fixed-text variant, for the reverse mapping.
const FIXED: [EtcdError; 18] = [
    EtcdError::KeyNotProvided,
    EtcdError::KeyNotFound,
    EtcdError::ValueProvided,
    EtcdError::LeaseProvided,
    EtcdError::TooManyTxnOps,
    EtcdError::DuplicateKey,
    EtcdError::InvalidSortOption,
    EtcdError::RequestTooLarge,
    EtcdError::Compacted,
    EtcdError::FutureRevision,
    EtcdError::LeaseNotFound,
    EtcdError::LeaseExists,
    EtcdError::LeaseTtlTooLarge,
    EtcdError::NoLeader,
    EtcdError::LeaderChanged,
    EtcdError::ServerStopped,
    EtcdError::Timeout,
    EtcdError::TooManyRequests,
];

impl EtcdError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            KeyNotProvided | KeyNotFound | ValueProvided | LeaseProvided | TooManyTxnOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge | InvalidArgument(_) => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            LeaseExists => Code::FailedPrecondition,
            NoLeader | LeaderChanged | ServerStopped | Timeout | Unavailable(_) => Code::Unavailable,
            TooManyRequests => Code::ResourceExhausted,
            Other(_) => Code::Unknown,
        }
    }

    /// The gRPC status a server sends for this error.
    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    /// Recognises an etcd error from a status by its exact text, as etcd's own client does.
    pub fn from_status(status: &Status) -> Option<EtcdError> {
        FIXED.iter().find(|e| e.code() == status.code() && e.to_string() == status.message()).cloned()
    }

    /// True when the request may be retried elsewhere (etcd clients retry on Unavailable).
    pub fn is_retriable(&self) -> bool {
        self.code() == Code::Unavailable
    }
}

/// True when a failed call provably never reached the server: no connection could be made
/// ("tcp connect error", "error trying to connect", "Connection refused"). A reset or broken
/// connection does not qualify: the request may have been sent before it broke. Only such a
/// failure makes a write safe to send elsewhere.
pub fn never_reached(s: &Status) -> bool {
    if s.code() != Code::Unavailable || EtcdError::from_status(s).is_some() {
        return false;
    }
    let mut text = s.message().to_lowercase();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        text.push(' ');
        text.push_str(&c.to_string().to_lowercase());
        cause = c.source();
    }
    text.contains("connect error") || text.contains("trying to connect") || text.contains("connection refused")
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_codes_round_trip() {
        for e in FIXED {
            let s = e.to_status();
            assert!(s.message().starts_with("etcdserver: "), "{e:?}");
            assert_eq!(EtcdError::from_status(&s), Some(e));
        }
        assert_eq!(EtcdError::RequestTooLarge.code(), Code::InvalidArgument);
        assert_eq!(
            EtcdError::Compacted.to_status().message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
}
