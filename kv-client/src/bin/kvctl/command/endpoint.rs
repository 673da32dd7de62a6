//! `kvctl endpoint status|health`: every endpoint of `--endpoints`, one row each.

use std::time::Instant;

use kv_client::kv_api::etcdserverpb::RangeRequest;
use kv_client::{Client, Options};

use crate::printer;

#[derive(clap::Subcommand, Debug)]
pub enum Verb {
    /// Status of every endpoint: member id, version, db size, leader or not, term, indexes.
    Status,
    /// Whether every endpoint serves a linearizable read (which needs a quorum and a leader).
    Health,
}

pub async fn run(endpoints: &[String], opts: Options, verb: Verb, out: printer::Format) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    match verb {
        Verb::Status => {
            let mut rows = Vec::new();
            for ep in endpoints {
                match status(ep, opts).await {
                    Ok(s) => rows.push((ep.clone(), s)),
                    Err(e) => failed.push(format!("{ep}: {e}")),
                }
            }
            printer::statuses(out, &rows);
        }
        Verb::Health => {
            let mut rows = Vec::new();
            for ep in endpoints {
                let started = Instant::now();
                let r = health(ep, opts).await.map(|()| started.elapsed()).map_err(|e| e.to_string());
                if let Err(e) = &r {
                    failed.push(format!("{ep}: {e}"));
                }
                rows.push((ep.clone(), r));
            }
            printer::health(out, &rows);
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    Ok(())
}

async fn status(ep: &str, opts: Options) -> kv_client::Result<kv_client::kv_api::etcdserverpb::StatusResponse> {
    Client::connect(&[ep.to_string()], opts).await?.status().await
}

/// etcdctl's check: a linearizable read of the key "health" through this endpoint alone.
async fn health(ep: &str, opts: Options) -> kv_client::Result<()> {
    let c = Client::connect(&[ep.to_string()], opts).await?;
    c.range(RangeRequest { key: b"health".to_vec(), ..Default::default() }).await.map(|_| ())
}
