//! A lock or election client's lease: granted through a random member, renewed in the
//! background through random members, and sometimes abandoned on purpose while its owner waits
//! or holds (renewals stop and the lease is revoked, as when a client is paused past its TTL):
//! the waiter must then not be granted, and the holder's guarded writes must be refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use madsim::rand::{thread_rng, Rng};
use madsim::time::{sleep, timeout, Instant};

use crate::clients::{lease_client, since, CLIENT_TIMEOUT};

/// The TTL asked for (raised by the members to their minimum).
const TTL_SECS: i64 = 2;
/// How often the lease is renewed.
const RENEW_EVERY: Duration = Duration::from_millis(600);
/// One session in this many is abandoned.
const ABANDON_ONE_IN: u32 = 3;
/// An abandoned session is abandoned this long after its grant, at most.
const ABANDON_WITHIN: Duration = Duration::from_millis(1500);

/// A granted lease, kept alive until [`Session::end`] or until abandoned.
pub struct Session {
    pub lease: i64,
    stop: Arc<AtomicBool>,
    /// When it was abandoned (ns since the workload began), if it was.
    abandoned: Arc<std::sync::Mutex<Option<i64>>>,
    endpoints: Vec<String>,
}

impl Session {
    /// Grants lease `id` (chosen by the client, so that a grant whose answer was lost is still
    /// known) and starts renewing it; decides at random whether and when to abandon it.
    pub async fn grant(endpoints: &[String], id: i64, start: Instant) -> Option<Session> {
        let granted = timeout(CLIENT_TIMEOUT, async {
            lease_client(endpoints).await?.lease_grant(LeaseGrantRequest { ttl: TTL_SECS, id }).await
        })
        .await;
        if !matches!(granted, Ok(Ok(_))) {
            return None;
        }
        let s = Session {
            lease: id,
            stop: Arc::new(AtomicBool::new(false)),
            abandoned: Arc::default(),
            endpoints: endpoints.to_vec(),
        };
        let (stop, eps) = (s.stop.clone(), s.endpoints.clone());
        madsim::task::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sleep(RENEW_EVERY).await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let _ = timeout(CLIENT_TIMEOUT, async {
                    let mut lease = lease_client(&eps).await?;
                    let requests = futures::stream::iter([LeaseKeepAliveRequest { id }]);
                    let mut replies = lease.lease_keep_alive(requests).await?.into_inner();
                    replies.message().await
                })
                .await;
            }
        });
        if thread_rng().gen_range(0..ABANDON_ONE_IN) == 0 {
            let after = Duration::from_millis(thread_rng().gen_range(0..ABANDON_WITHIN.as_millis() as u64));
            let (stop, eps, when) = (s.stop.clone(), s.endpoints.clone(), s.abandoned.clone());
            madsim::task::spawn(async move {
                sleep(after).await;
                if !stop.swap(true, Ordering::Relaxed) {
                    *when.lock().unwrap() = Some(since(start));
                    revoke(&eps, id).await;
                }
            });
        }
        Some(s)
    }

    /// When the session was abandoned, if it was.
    pub fn abandoned(&self) -> Option<i64> {
        *self.abandoned.lock().unwrap()
    }

    /// Stops renewing and revokes the lease (its keys go with it).
    pub async fn end(&self) {
        if !self.stop.swap(true, Ordering::Relaxed) {
            revoke(&self.endpoints, self.lease).await;
        }
    }
}

/// Revokes `id`, trying a few members; a lease left behind expires by itself.
async fn revoke(endpoints: &[String], id: i64) {
    for _ in 0..3 {
        let done = timeout(CLIENT_TIMEOUT, async {
            lease_client(endpoints).await?.lease_revoke(LeaseRevokeRequest { id }).await
        })
        .await;
        match done {
            Ok(Ok(_)) => return,
            Ok(Err(s)) if s.message().contains("requested lease not found") => return,
            _ => sleep(Duration::from_millis(100)).await,
        }
    }
}
