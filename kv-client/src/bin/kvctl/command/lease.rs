//! `kvctl lease grant|revoke|keep-alive|timetolive|list`, with etcdctl's output. Lease ids
//! are written and read in hexadecimal, as etcdctl does.

use anyhow::Context;
use kv_client::{Client, LeaseLost};

use crate::printer;

#[derive(clap::Subcommand, Debug)]
pub enum Verb {
    /// Grant a lease of TTL seconds (the server raises it to its minimum).
    Grant {
        ttl: i64,
        /// Ask for this id (hexadecimal) rather than one the server picks.
        #[arg(long, value_parser = parse_id)]
        id: Option<i64>,
    },
    /// Revoke a lease, deleting the keys attached to it.
    Revoke {
        #[arg(value_parser = parse_id)]
        id: i64,
    },
    /// Keep a lease alive until interrupted; fails when the lease is lost.
    KeepAlive {
        #[arg(value_parser = parse_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// What a lease has left.
    Timetolive {
        #[arg(value_parser = parse_id)]
        id: i64,
        /// List the attached keys too.
        #[arg(long)]
        keys: bool,
    },
    /// List every lease.
    List,
}

/// A lease id in hexadecimal (etcdctl's notation), positive.
pub fn parse_id(s: &str) -> Result<i64, String> {
    match i64::from_str_radix(s.trim_start_matches("0x"), 16) {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(format!("bad lease id {s:?}: expected a positive hexadecimal number")),
    }
}

pub async fn run(client: &Client, verb: Verb, out: printer::Format) -> anyhow::Result<()> {
    match verb {
        Verb::Grant { ttl, id } => printer::lease_granted(out, &client.lease_grant(ttl, id.unwrap_or(0)).await?),
        Verb::Revoke { id } => printer::lease_revoked(out, id, &client.lease_revoke(id).await?),
        Verb::Timetolive { id, keys } => printer::lease_ttl(out, &client.lease_time_to_live(id, keys).await?),
        Verb::List => printer::leases(out, &client.leases().await?),
        Verb::KeepAlive { id, once: true } => match client.lease_keep_alive_once(id).await? {
            0 => anyhow::bail!("lease {id:016x} expired or revoked"),
            ttl => printer::lease_kept(out, id, ttl),
        },
        Verb::KeepAlive { id, once: false } => {
            let mut kept = client.keep_alive(id).await.with_context(|| format!("keeping lease {id:016x} alive"))?;
            let mut states = kept.watch();
            loop {
                if let kv_client::LeaseState::Alive { ttl, .. } = *states.borrow_and_update() {
                    printer::lease_kept(out, id, ttl);
                }
                tokio::select! {
                    why = kept.lost() => return Err(lost(id, why)),
                    changed = states.changed() => if changed.is_err() { return Err(lost(id, LeaseLost::Unconfirmed)) },
                }
            }
        }
    }
    Ok(())
}

fn lost(id: i64, why: LeaseLost) -> anyhow::Error {
    anyhow::anyhow!("lease {id:016x} lost: {why}")
}
