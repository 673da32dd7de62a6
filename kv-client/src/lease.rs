//! Leases: grant, revoke, time-to-live, list, one renewal, and [`KeepAlive`], which renews a
//! lease in the background through whichever member answers and reports when the lease is
//! lost.
//!
//! A renewal answered with TTL `t` that was sent at instant `s` keeps the lease alive until at
//! least `s + t` (raftkv answers a renewal only once a new leader would honour it too), so
//! [`KeepAlive`] reports the lease alive until then, and lost as soon as the cluster says it
//! is gone or that moment passes with no renewal confirmed.

use std::time::Duration;

use kv_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Client, ClientError, Kind, Result};

impl Client {
    /// Grants a lease of `ttl` seconds (the server raises it to its minimum), with `id`, or an
    /// id the server picks when `id` is 0.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        let resp = self
            .call(Kind::Write, |mut m| async move { m.lease.lease_grant(LeaseGrantRequest { ttl, id }).await })
            .await?;
        self.observe(&resp.header);
        Ok(resp)
    }

    /// Revokes lease `id`, deleting the keys attached to it.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        let resp = self
            .call(Kind::Write, |mut m| async move { m.lease.lease_revoke(LeaseRevokeRequest { id }).await })
            .await?;
        self.observe(&resp.header);
        Ok(resp)
    }

    /// What lease `id` has left (TTL -1: no such lease), its granted TTL, and with `keys` its
    /// attached keys.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        self.call(
            Kind::Read,
            |mut m| async move { m.lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys }).await },
        )
        .await
    }

    /// Every lease.
    pub async fn leases(&self) -> Result<LeaseLeasesResponse> {
        self.call(Kind::Read, |mut m| async move { m.lease.lease_leases(LeaseLeasesRequest {}).await }).await
    }

    /// Renews lease `id` once: its granted TTL, or 0 if it no longer exists.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64> {
        self.call(Kind::Read, |mut m| async move {
            let requests = futures::stream::iter([LeaseKeepAliveRequest { id }]);
            let mut replies = m.lease.lease_keep_alive(requests).await?.into_inner();
            match replies.message().await? {
                Some(r) => Ok(tonic::Response::new(r.ttl)),
                None => Err(tonic::Status::unavailable("the keep-alive stream ended without an answer")),
            }
        })
        .await
    }

    /// Keeps lease `id` alive until the returned [`KeepAlive`] is dropped. The first renewal is
    /// made before it returns: an error if no member answered, a [`LeaseLost::Expired`] state
    /// if the lease no longer exists.
    pub async fn keep_alive(&self, id: i64) -> Result<KeepAlive> {
        let sent = Instant::now();
        let ttl = self.lease_keep_alive_once(id).await?;
        let first = if ttl > 0 {
            LeaseState::Alive { ttl, until: sent + secs(ttl) }
        } else {
            LeaseState::Lost(LeaseLost::Expired)
        };
        let (tx, rx) = watch::channel(first);
        let task = match first {
            LeaseState::Alive { .. } => Some(tokio::spawn(renew(self.clone(), id, tx))),
            LeaseState::Lost(_) => None,
        };
        Ok(KeepAlive { id, state: rx, task })
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// Whether a kept lease still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Alive until at least `until` (unless revoked): the last confirmed renewal's send time
    /// plus its TTL.
    Alive {
        ttl: i64,
        until: Instant,
    },
    Lost(LeaseLost),
}

/// Why a kept lease was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLost {
    /// The cluster answered that the lease no longer exists (it expired or was revoked).
    #[error("the lease expired or was revoked")]
    Expired,
    /// No renewal was confirmed before the last one ran out: the lease may be gone.
    #[error("no renewal was confirmed before the lease ran out")]
    Unconfirmed,
}

/// A lease kept alive in the background (see [`Client::keep_alive`]); dropping it stops the
/// renewals (the lease then expires after its TTL, or revoke it first).
pub struct KeepAlive {
    id: i64,
    state: watch::Receiver<LeaseState>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl KeepAlive {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The lease's state now.
    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// Resolves when the lease is lost, with the reason.
    pub async fn lost(&mut self) -> LeaseLost {
        let lost = self.state.wait_for(|s| matches!(s, LeaseState::Lost(_))).await.map(|s| *s);
        match lost {
            Ok(LeaseState::Lost(why)) => why,
            // The renewing task ended without saying: it can only have been stopped.
            _ => LeaseLost::Unconfirmed,
        }
    }

    /// A receiver of every change of state (for `select!` loops).
    pub fn watch(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Renews every third of the TTL, as etcd's clients do; after a failed attempt, again soon,
/// until the lease runs out.
async fn renew(client: Client, id: i64, state: watch::Sender<LeaseState>) {
    let (mut ttl, mut until) = match *state.borrow() {
        LeaseState::Alive { ttl, until } => (ttl, until),
        LeaseState::Lost(_) => return,
    };
    let mut next = Instant::now() + secs(ttl) / 3;
    loop {
        tokio::time::sleep_until(next.min(until)).await;
        let sent = Instant::now();
        if sent >= until {
            state.send_replace(LeaseState::Lost(LeaseLost::Unconfirmed));
            return;
        }
        let attempt = client.with_timeout(until - sent).lease_keep_alive_once(id).await;
        match attempt {
            Ok(0) => {
                state.send_replace(LeaseState::Lost(LeaseLost::Expired));
                return;
            }
            Ok(t) => {
                (ttl, until) = (t, sent + secs(t));
                state.send_replace(LeaseState::Alive { ttl, until });
                next = sent + secs(ttl) / 3;
            }
            Err(ClientError::Etcd(kv_api::EtcdError::LeaseNotFound)) => {
                state.send_replace(LeaseState::Lost(LeaseLost::Expired));
                return;
            }
            // No member answered in time: try again shortly, while the lease may still hold.
            Err(_) => next = Instant::now() + (secs(ttl) / 10).max(Duration::from_millis(100)),
        }
    }
}
