//! Leader election: [`Client::campaign`] waits until the candidate leads and returns its
//! [`LeaderKey`] (whose `rev` identifies the leadership and fences it, as a lock's token does);
//! [`Client::proclaim`] and [`Client::resign`] act only while that leadership lasts;
//! [`Client::observe_leader`] streams every change of leader.

use std::time::Duration;

use kv_api::mvccpb::KeyValue;
use kv_api::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest};

use crate::{Client, ClientError, Kind, Result};

impl Client {
    /// Campaigns in election `name` with `lease` and `value`, waiting at most `wait` to lead.
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        lease: i64,
        value: impl Into<Vec<u8>>,
        wait: Duration,
    ) -> Result<LeaderKey> {
        let (name, value) = (name.into(), value.into());
        let resp = self
            .with_timeout(wait)
            .call(Kind::Write, |mut m| {
                let req = CampaignRequest { name: name.clone(), lease, value: value.clone() };
                async move { m.election.campaign(req).await }
            })
            .await?;
        self.observe(&resp.header);
        resp.leader.ok_or_else(|| ClientError::Etcd(kv_api::EtcdError::Other("a campaign without a leader key".into())))
    }

    /// Replaces the leader's value; "election: not leader" once the leadership has ended.
    pub async fn proclaim(&self, leader: &LeaderKey, value: impl Into<Vec<u8>>) -> Result<()> {
        let value = value.into();
        let resp = self
            .call(Kind::Write, |mut m| {
                let req = ProclaimRequest { leader: Some(leader.clone()), value: value.clone() };
                async move { m.election.proclaim(req).await }
            })
            .await?;
        self.observe(&resp.header);
        Ok(())
    }

    /// The current leader's key and value, if there is a leader.
    pub async fn leader(&self, name: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        let name = name.into();
        let asked = self
            .call(Kind::Read, |mut m| {
                let req = LeaderRequest { name: name.clone() };
                async move { m.election.leader(req).await }
            })
            .await;
        match asked {
            Ok(r) => Ok(r.kv),
            Err(ClientError::Etcd(kv_api::EtcdError::Other(m))) if m.contains("election: no leader") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives up the leadership (nothing if it has already ended).
    pub async fn resign(&self, leader: &LeaderKey) -> Result<()> {
        let resp = self
            .call(Kind::Write, |mut m| {
                let req = ResignRequest { leader: Some(leader.clone()) };
                async move { m.election.resign(req).await }
            })
            .await?;
        self.observe(&resp.header);
        Ok(())
    }

    /// Every change of leader of election `name`, from the current one, through the member
    /// calls go to (the stream ends if that member fails: observe again).
    pub async fn observe_leader(&self, name: impl Into<Vec<u8>>) -> Result<tonic::Streaming<LeaderResponse>> {
        let mut m = self.members[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.members.len()].clone();
        Ok(m.election.observe(LeaderRequest { name: name.into() }).await?.into_inner())
    }
}
