//! Leases in the MVCC store: the lease table and the writes of the lease family: grant, revoke
//! and checkpoint.
//!
//! A lease is state, not a key: granting or checkpointing one does not move the revision, as in
//! etcd. Revoking one deletes every key attached to it in one revision (one delete event per
//! key, found through the [`Space::LeaseKeys`] index), and moves the revision only when it
//! deleted something. Which leases expire, and when, is decided by the leader, not here: this
//! is what the log carries once it has decided.
//!
//! Time in the table is the **lease clock**: milliseconds that only checkpoints advance, each by
//! the time its leader measured since its previous one. A lease stores when it expires on that
//! clock, so a checkpoint rewrites only the leases renewed since the last one; every other
//! lease's remaining TTL shrinks as the clock advances. A new leader starts each lease from
//! what the table says it has left.

use std::ops::Bound;

use kv_api::etcdserverpb::{DeleteRangeRequest, LeaseGrantResponse, LeaseRevokeResponse};
use kv_api::EtcdError;
use serde::{Deserialize, Serialize};

use super::index::Space;
use super::view::Reader;
use super::write::{header, Writer};
use super::MvccError;

/// A lease as the table stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The TTL it was granted, in seconds.
    pub ttl: i64,
    /// When it expires on the lease clock (ms).
    pub expires_ms: i64,
}

impl LeaseRecord {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("a lease record serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<LeaseRecord, MvccError> {
        bincode::deserialize(bytes).map_err(|_| MvccError::Corrupt("a malformed lease record"))
    }

    /// What it has left when the lease clock reads `clock`.
    pub fn remaining_ms(&self, clock: i64) -> i64 {
        self.expires_ms.saturating_sub(clock).max(0)
    }
}

/// A lease as a reader sees it: its TTL and what it had left at the last checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    /// The TTL it was granted, in seconds.
    pub ttl: i64,
    /// What the table says it has left (ms): a new leader starts it from here.
    pub remaining_ms: i64,
}

/// A lease and the keys attached to it.
pub type WithKeys = (LeaseInfo, Vec<Vec<u8>>);

/// Every lease with what it has left, by id.
pub fn table<R: Reader + ?Sized>(r: &R) -> Result<Vec<LeaseInfo>, MvccError> {
    let now = clock(r)?;
    Ok(all(r)?.into_iter().map(|(id, l)| LeaseInfo { id, ttl: l.ttl, remaining_ms: l.remaining_ms(now) }).collect())
}

/// Lease `id` with what it has left, and its keys.
pub fn with_keys<R: Reader + ?Sized>(r: &R, id: i64) -> Result<Option<WithKeys>, MvccError> {
    let Some(l) = get(r, id)? else { return Ok(None) };
    let info = LeaseInfo { id, ttl: l.ttl, remaining_ms: l.remaining_ms(clock(r)?) };
    Ok(Some((info, attached(r, id)?)))
}

/// The table key of lease `id`.
pub fn lease_id_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Id 0 is never a lease (etcd's "no lease"): its slot in the table holds the lease clock, so
/// that the clock travels with the table in snapshots.
const CLOCK_SLOT: [u8; 8] = 0i64.to_be_bytes();

/// The lease clock (ms); 0 before the first checkpoint.
pub fn clock<R: Reader + ?Sized>(r: &R) -> Result<i64, MvccError> {
    match r.get(Space::Leases, &CLOCK_SLOT)? {
        None => Ok(0),
        Some(v) => {
            Ok(i64::from_be_bytes(v.as_slice().try_into().map_err(|_| MvccError::Corrupt("a malformed lease clock"))?))
        }
    }
}

/// Lease `id`'s record, if it exists.
pub fn get<R: Reader + ?Sized>(r: &R, id: i64) -> Result<Option<LeaseRecord>, MvccError> {
    if id == 0 {
        return Ok(None);
    }
    r.get(Space::Leases, &lease_id_key(id))?.map(|v| LeaseRecord::decode(&v)).transpose()
}

/// Every lease, by id.
pub fn all<R: Reader + ?Sized>(r: &R) -> Result<Vec<(i64, LeaseRecord)>, MvccError> {
    let mut out = Vec::new();
    for item in r.scan(Space::Leases, Bound::Excluded(&CLOCK_SLOT[..]), Bound::Unbounded, false) {
        let (k, v) = item?;
        let id = i64::from_be_bytes(k.as_slice().try_into().map_err(|_| MvccError::Corrupt("a malformed lease id"))?);
        out.push((id, LeaseRecord::decode(&v)?));
    }
    Ok(out)
}

/// The keys attached to lease `id`, in key order.
pub fn attached<R: Reader + ?Sized>(r: &R, id: i64) -> Result<Vec<Vec<u8>>, MvccError> {
    let lower = lease_id_key(id);
    let mut keys = Vec::new();
    for item in r.scan(Space::LeaseKeys, Bound::Included(&lower[..]), Bound::Unbounded, false) {
        let (k, _) = item?;
        if !k.starts_with(&lower) {
            break;
        }
        keys.push(k[8..].to_vec());
    }
    Ok(keys)
}

impl<R: Reader + ?Sized> Writer<'_, '_, R> {
    /// Grants lease `id` (chosen before proposing, positive) with `ttl` seconds, from now on the
    /// lease clock.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, MvccError> {
        if id <= 0 || ttl <= 0 {
            return Err(EtcdError::InvalidArgument("a lease needs a positive id and TTL".into()).into());
        }
        if get(&*self.view, id)?.is_some() {
            return Err(EtcdError::LeaseExists.into());
        }
        let expires_ms = clock(&*self.view)?.saturating_add(ttl.saturating_mul(1000));
        self.view.put(Space::Leases, lease_id_key(id).to_vec(), LeaseRecord { ttl, expires_ms }.encode());
        Ok(LeaseGrantResponse { header: header(self.revs.current), id, ttl, error: String::new() })
    }

    /// Revokes lease `id`: its keys are deleted in one revision, then the lease.
    pub fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, MvccError> {
        if get(&*self.view, id)?.is_none() {
            return Err(EtcdError::LeaseNotFound.into());
        }
        self.request(|w, ctx| {
            for key in attached(&*w.view, id)? {
                w.delete_in(ctx, &DeleteRangeRequest { key, ..Default::default() })?;
            }
            Ok(())
        })?;
        // After the keys: the lease itself is state, and removing it takes no revision.
        self.view.delete(Space::Leases, lease_id_key(id).to_vec());
        Ok(LeaseRevokeResponse { header: header(self.revs.current) })
    }

    /// Advances the lease clock by `elapsed_ms`, then records what each listed lease that still
    /// exists has left (`remaining` ms from the new clock).
    pub fn lease_checkpoint(&mut self, elapsed_ms: i64, remaining: &[(i64, i64)]) -> Result<(), MvccError> {
        let now = clock(&*self.view)?.saturating_add(elapsed_ms.max(0));
        self.view.put(Space::Leases, CLOCK_SLOT.to_vec(), now.to_be_bytes().to_vec());
        for &(id, remaining_ms) in remaining {
            if let Some(mut lease) = get(&*self.view, id)? {
                lease.expires_ms = now.saturating_add(remaining_ms.max(0));
                self.view.put(Space::Leases, lease_id_key(id).to_vec(), lease.encode());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::KvEngine;
    use crate::mvcc::index::lease_key;
    use crate::mvcc::read::Revisions;
    use crate::mvcc::testing::{write, State};
    use kv_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};

    fn put(key: &str, lease: i64) -> PutRequest {
        PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() }
    }

    #[test]
    fn a_put_attaches_its_key_to_an_existing_lease_only() {
        let state = State::default();
        let revs = Revisions { current: 1, compacted: 0 };
        let (revs, _) = write(&state, revs, |w| {
            let granted = w.lease_grant(7, 10).unwrap();
            assert_eq!((granted.id, granted.ttl, granted.header.unwrap().revision), (7, 10, 1));
            assert!(matches!(w.lease_grant(7, 5), Err(MvccError::Etcd(EtcdError::LeaseExists))));
            assert!(matches!(w.put(&put("a", 8)), Err(MvccError::Etcd(EtcdError::LeaseNotFound))));
            w.put(&put("a", 7)).unwrap();
            w.put(&put("b", 7)).unwrap();
        });
        assert_eq!(revs.current, 3, "a grant takes no revision, each put one");
        assert_eq!(attached(&state, 7).unwrap(), [b"a".to_vec(), b"b".to_vec()]);
        // A put without the lease detaches the key; ignore_lease keeps it.
        let (_, _) = write(&state, revs, |w| {
            w.put(&put("a", 0)).unwrap();
            w.put(&PutRequest { key: b"b".to_vec(), value: b"w".to_vec(), ignore_lease: true, ..Default::default() })
                .unwrap();
        });
        assert_eq!(attached(&state, 7).unwrap(), [b"b".to_vec()]);
        assert!(state.index.get(Space::LeaseKeys, &lease_key(7, b"a")).is_none());
    }

    #[test]
    fn a_revoke_deletes_the_attached_keys_in_one_revision_then_the_lease() {
        let state = State::default();
        let revs = Revisions { current: 1, compacted: 0 };
        let (revs, _) = write(&state, revs, |w| {
            w.lease_grant(1, 10).unwrap();
            w.lease_grant(2, 10).unwrap();
            for k in ["x", "y", "z"] {
                w.put(&put(k, 1)).unwrap();
            }
            w.put(&put("other", 2)).unwrap();
        });
        let (after, changes) = write(&state, revs, |w| {
            let r = w.lease_revoke(1).unwrap();
            assert_eq!(r.header.unwrap().revision, revs.current + 1);
            assert!(matches!(w.lease_revoke(1), Err(MvccError::Etcd(EtcdError::LeaseNotFound))));
        });
        assert_eq!(after.current, revs.current + 1, "one revision for all three deletes");
        let deleted: Vec<_> = changes.iter().map(|c| (c.key.clone(), c.is_delete(), c.version.mod_revision)).collect();
        let at = after.current;
        assert_eq!(deleted, [(b"x".to_vec(), true, at), (b"y".to_vec(), true, at), (b"z".to_vec(), true, at)]);
        assert!(get(&state, 1).unwrap().is_none() && attached(&state, 1).unwrap().is_empty());
        assert_eq!(attached(&state, 2).unwrap(), [b"other".to_vec()]);
        // A lease with no keys goes without a revision.
        let (again, changes) = write(&state, after, |w| {
            w.lease_grant(3, 5).unwrap();
            w.lease_revoke(3).unwrap();
        });
        assert_eq!((again.current, changes.len()), (after.current, 0));
    }

    #[test]
    fn a_txn_put_with_an_unknown_lease_fails_the_txn_and_checkpoints_keep_ttls() {
        let state = State::default();
        let revs = Revisions { current: 1, compacted: 0 };
        let (revs, _) = write(&state, revs, |w| {
            w.lease_grant(5, 60).unwrap();
            let op = |lease| RequestOp {
                request: Some(kv_api::etcdserverpb::request_op::Request::RequestPut(put("t", lease))),
            };
            let txn = |lease| TxnRequest { success: vec![op(5), op(lease)], ..Default::default() };
            assert!(w.txn(&txn(9)).is_err());
            w.txn(&txn(5)).unwrap();
            w.lease_grant(6, 10).unwrap();
            w.lease_checkpoint(2_000, &[(5, 41_000), (9, 1)]).unwrap();
        });
        assert_eq!(revs.current, 2, "the failed txn wrote nothing");
        assert_eq!(clock(&state).unwrap(), 2_000);
        let five = get(&state, 5).unwrap().unwrap();
        assert_eq!((five.ttl, five.remaining_ms(2_000)), (60, 41_000));
        assert_eq!(get(&state, 6).unwrap().unwrap().remaining_ms(2_000), 8_000, "the clock ran for the rest");
        assert_eq!(get(&state, 9).unwrap(), None, "a checkpoint does not create leases");
        assert_eq!(all(&state).unwrap().iter().map(|(id, _)| *id).collect::<Vec<_>>(), [5, 6], "the clock is no lease");
        // A lease granted after a checkpoint starts from the clock it finds.
        write(&state, revs, |w| {
            w.lease_checkpoint(500, &[]).unwrap();
            w.lease_grant(7, 3).unwrap();
        });
        assert_eq!(get(&state, 7).unwrap().unwrap().remaining_ms(clock(&state).unwrap()), 3_000);
        assert_eq!(get(&state, 6).unwrap().unwrap().remaining_ms(clock(&state).unwrap()), 7_500);
    }

    /// The index of keys by lease is derived data: rebuilt from the versions, it is the one
    /// apply kept.
    #[test]
    fn the_lease_index_rebuilt_from_the_versions_matches() {
        let state = State::default();
        let revs = Revisions { current: 1, compacted: 0 };
        let (revs, _) = write(&state, revs, |w| {
            w.lease_grant(1, 10).unwrap();
            w.lease_grant(2, 10).unwrap();
            w.put(&put("a", 1)).unwrap();
            w.put(&put("b", 1)).unwrap();
            w.put(&put("a", 2)).unwrap();
            w.put(&put("c", 2)).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"c".to_vec(), ..Default::default() }).unwrap();
        });
        let _ = revs;
        let rebuilt = crate::mvcc::index::KeyIndex::default();
        for item in state.engine.scan(crate::engine::Tree::KvRevs, Bound::Unbounded, Bound::Unbounded, false) {
            let (k, v) = item.unwrap();
            rebuilt.derive(&k, &v).unwrap();
        }
        rebuilt.derive_lease_keys().unwrap();
        let keys = |i: &crate::mvcc::index::KeyIndex| -> Vec<Vec<u8>> {
            i.scan(Space::LeaseKeys, Bound::Unbounded, Bound::Unbounded, false).map(|p| p.unwrap().0).collect()
        };
        assert_eq!(keys(&rebuilt), keys(&state.index));
        assert_eq!(keys(&rebuilt), [lease_key(1, b"b"), lease_key(2, b"a")]);
    }
}
