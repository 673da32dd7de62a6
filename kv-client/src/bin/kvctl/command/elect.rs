//! `kvctl elect NAME PROPOSAL`: campaigns on a lease kvctl keeps alive, prints the leader key
//! and value once elected, and leads until interrupted (then resigns). `kvctl elect --listen
//! NAME`: prints every leader (key, then value) as it changes, as etcdctl does.

use std::time::Duration;

use kv_client::Client;

/// The TTL of the lease the candidate campaigns with: kvctl renews it; if kvctl dies, its
/// leadership ends this long after.
const LEASE_TTL: i64 = 10;

/// Longest wait to be elected.
const WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(clap::Args, Debug)]
pub struct Args {
    pub name: String,
    /// The value the candidate announces once it leads.
    pub proposal: Option<String>,
    /// Observe the election instead of campaigning.
    #[arg(short = 'l', long)]
    pub listen: bool,
}

pub async fn run(client: &Client, a: Args) -> anyhow::Result<()> {
    if a.listen {
        let mut leaders = client.observe_leader(a.name.as_bytes()).await?;
        while let Some(r) = leaders.message().await? {
            if let Some(kv) = r.kv {
                println!("{}\n{}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
            }
        }
        anyhow::bail!("the member ended the observation");
    }
    let Some(proposal) = a.proposal else { anyhow::bail!("a proposal is needed to campaign (or --listen)") };
    let lease = client.lease_grant(LEASE_TTL, 0).await?.id;
    let mut kept = client.keep_alive(lease).await?;
    let leader = tokio::select! {
        l = client.campaign(a.name.as_bytes(), lease, proposal.as_bytes(), WAIT) => l?,
        why = kept.lost() => anyhow::bail!("the campaign's lease was lost: {why}"),
    };
    println!("{}\n{proposal}", String::from_utf8_lossy(&leader.key));
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        why = kept.lost() => Err(anyhow::anyhow!("leadership lost: {why}")),
    };
    let _ = client.resign(&leader).await;
    let _ = client.lease_revoke(lease).await;
    outcome
}
