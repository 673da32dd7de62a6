//! Locks with fencing tokens: [`Client::lock`] waits for the lock and hands back its key and
//! token (the key's create revision, which only grows from one holder to the next);
//! [`Locked::guard`] is the Txn compare that makes a write succeed only while the lock is still
//! this holder's. A lock alone cannot protect a resource from a holder that was paused past its
//! lease: guard every write with the token.

use std::time::Duration;

use kv_api::etcdserverpb::RangeRequest;
use kv_api::v3lockpb::{LockRequest, UnlockRequest};

use crate::request::{Cmp, Op};
use crate::{Client, ClientError, Kind, Result};

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locked {
    /// The holder's key (`name/<lease in hex>`).
    pub key: Vec<u8>,
    /// The fencing token: the key's create revision.
    pub token: i64,
}

impl Locked {
    /// The Txn compare that holds only while this holder still holds the lock.
    pub fn guard(&self) -> Cmp {
        Cmp::create_revision(self.key.clone(), Op::Equal, self.token)
    }
}

impl Client {
    /// Waits at most `wait` for lock `name`, held with `lease` (the lock ends with the lease:
    /// keep it alive while holding it).
    pub async fn lock(&self, name: impl Into<Vec<u8>>, lease: i64, wait: Duration) -> Result<Locked> {
        let name = name.into();
        let waiting = self.with_timeout(wait);
        let resp = waiting
            .call(Kind::Write, |mut m| {
                let name = name.clone();
                async move { m.lock.lock(LockRequest { name, lease }).await }
            })
            .await?;
        self.observe(&resp.header);
        let read = self.range(RangeRequest { key: resp.key.clone(), ..Default::default() }).await?;
        let kv = read.kvs.into_iter().next().ok_or_else(|| {
            ClientError::Etcd(kv_api::EtcdError::Other("the lock's key vanished as it was granted".into()))
        })?;
        Ok(Locked { key: resp.key, token: kv.create_revision })
    }

    /// Releases a held lock.
    pub async fn unlock(&self, locked: &Locked) -> Result<()> {
        let key = locked.key.clone();
        let resp = self
            .call(Kind::Write, |mut m| {
                let key = key.clone();
                async move { m.lock.unlock(UnlockRequest { key }).await }
            })
            .await?;
        self.observe(&resp.header);
        Ok(())
    }
}
