//! On-disk layout of the MVCC data (as etcd lays it out: versions by revision, an index by key).
//!
//! - `KvRevs`: `revision ‖ sub-revision` -> [`Version`] (user key and [`Record`]): every
//!   retained version, tombstones included, in revision order. One apply appends a run of
//!   them, so the sled engine stores it packed; watch replay from a revision and compaction
//!   read it in order.
//! - `KvHistory`: `memcomparable(user key) ‖ revision` -> sub-revision: the index by key. The
//!   escaping keeps user-key order, so a key range maps to one contiguous index range, and a
//!   key's revisions are adjacent and sorted. Derived from `KvRevs`.
//! - `Kv`: user key -> [`Record`] of its live version (reads at the current revision). Derived
//!   from `KvRevs`.

use serde::{Deserialize, Serialize};

/// One version of a key. `version == 0` marks a tombstone (the key was deleted at `mod_revision`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub create_revision: i64,
    pub mod_revision: i64,
    /// Position of this write inside its revision (a txn writes several keys at one revision).
    pub sub: i64,
    pub version: i64,
    pub lease: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Record {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("records always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, bincode::Error> {
        bincode::deserialize(bytes)
    }

    pub fn to_kv(&self, key: &[u8], keys_only: bool) -> kv_api::mvccpb::KeyValue {
        kv_api::mvccpb::KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: if keys_only { Vec::new() } else { self.value.clone() },
            lease: self.lease,
        }
    }
}

/// A `KvRevs` value: one version of a key, with the key.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct Version {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub record: Record,
}

/// What [`Version`] encodes from, without copying the key and the record.
#[derive(Serialize)]
struct VersionRef<'a> {
    #[serde(with = "serde_bytes")]
    key: &'a [u8],
    record: &'a Record,
}

impl Version {
    pub fn encode(key: &[u8], record: &Record) -> Vec<u8> {
        bincode::serialize(&VersionRef { key, record }).expect("versions always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Version, bincode::Error> {
        crate::codec::decode(bytes)
    }
}

/// A `KvHistory` value: the sub-revision that, with the key's revision, finds the version in
/// `KvRevs`.
pub fn index_value(sub: i64) -> Vec<u8> {
    (sub as u64).to_be_bytes().to_vec()
}

/// The `KvRevs` key of the version a `KvHistory` entry names: the revision its key ends with
/// and the sub-revision its value holds.
pub fn indexed_revs_key(history_key: &[u8], value: &[u8]) -> Option<[u8; 16]> {
    let sub = u64::from_be_bytes(value.try_into().ok()?) as i64;
    Some(revs_key(history_key_revision(history_key)?, sub))
}

/// Order-preserving encoding of a user key: 0x00 becomes 0x00 0xff, and 0x00 0x01 terminates.
/// For keys a < b, enc(a) < enc(b), and no enc(a) is a prefix of another key's encoding.
pub fn encode_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
    out
}

/// History key of `key` at `revision`.
pub fn history_key(key: &[u8], revision: i64) -> Vec<u8> {
    let mut k = encode_key(key);
    k.extend_from_slice(&(revision as u64).to_be_bytes());
    k
}

/// The smallest history key above every version of the key whose encoding is `encoded`.
pub fn after_all_versions(encoded: &[u8]) -> Vec<u8> {
    let mut k = encoded.to_vec();
    k.extend_from_slice(&[0xff; 8]);
    k
}

/// Splits a history key into (user key, revision).
pub fn decode_history_key(k: &[u8]) -> Option<(Vec<u8>, i64)> {
    if k.len() < 10 {
        return None;
    }
    let enc = &k[..k.len() - 8];
    let mut user = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        match (enc[i], enc.get(i + 1)) {
            (0, Some(0xff)) => {
                user.push(0);
                i += 2;
            }
            (0, Some(1)) if i + 2 == enc.len() => return Some((user, history_key_revision(k)?)),
            (0, _) => return None,
            (b, _) => {
                user.push(b);
                i += 1;
            }
        }
    }
    None
}

/// The revision a history key ends with, without decoding the user key.
pub fn history_key_revision(k: &[u8]) -> Option<i64> {
    let at = k.len().checked_sub(8)?;
    Some(u64::from_be_bytes(k[at..].try_into().ok()?) as i64)
}

/// `KvRevs` key of a write.
pub fn revs_key(revision: i64, sub: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(revision as u64).to_be_bytes());
    k[8..].copy_from_slice(&(sub as u64).to_be_bytes());
    k
}

/// Revision and sub-revision of a `KvRevs` key.
pub fn split_revs_key(k: &[u8]) -> Option<(i64, i64)> {
    let k: &[u8; 16] = k.try_into().ok()?;
    let (rev, sub) = k.split_at(8);
    Some((u64::from_be_bytes(rev.try_into().ok()?) as i64, u64::from_be_bytes(sub.try_into().ok()?) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encoding_preserves_order_and_round_trips(a in proptest::collection::vec(any::<u8>(), 0..8),
                                                    b in proptest::collection::vec(any::<u8>(), 0..8),
                                                    ra in 1i64..1000, rb in 1i64..1000) {
            let (ka, kb) = (history_key(&a, ra), history_key(&b, rb));
            prop_assert_eq!(decode_history_key(&ka), Some((a.clone(), ra)));
            prop_assert_eq!(history_key_revision(&ka), Some(ra));
            if a != b {
                prop_assert_eq!(a < b, ka < kb);
                prop_assert_eq!(a < b, after_all_versions(&encode_key(&a)) < kb);
            } else {
                prop_assert_eq!(ra < rb, ka < kb);
            }
        }
    }
}
