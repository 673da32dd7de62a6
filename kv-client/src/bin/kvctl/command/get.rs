//! `kvctl get <key> [range_end]`

use kv_client::kv_api::etcdserverpb::RangeRequest;
use kv_client::kv_api::Consistency;
use kv_client::Client;

use super::key_range;
use crate::printer;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub key: String,
    pub range_end: Option<String>,
    /// Get every key with `key` as prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Get every key >= `key`.
    #[arg(long)]
    pub from_key: bool,
    /// Most keys to return (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Read at this revision (0 = latest).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Only keys, no values.
    #[arg(long)]
    pub keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Read consistency: linearizable (l), lease, session, bounded, serializable (s).
    #[arg(long, default_value = "l", value_parser = ["l", "s", "linearizable", "serializable", "lease", "session", "bounded"])]
    pub consistency: String,
    /// Session reads: the highest revision already seen (this process's own writes are
    /// tracked automatically).
    #[arg(long, default_value_t = 0)]
    pub min_revision: i64,
    /// Bounded reads: the largest acceptable lag behind the leader, e.g. 500ms, 2s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_staleness: Option<std::time::Duration>,
}

pub async fn run(client: &Client, a: Args, out: printer::Format) -> anyhow::Result<()> {
    let (key, range_end) = key_range(&a.key, a.range_end.as_deref(), a.prefix, a.from_key)?;
    let level = match a.consistency.as_str() {
        "s" | "serializable" => Consistency::Serializable,
        "lease" => Consistency::Lease,
        "session" => Consistency::Session,
        "bounded" => Consistency::Bounded,
        _ => Consistency::Linearizable,
    };
    if level == Consistency::Bounded && a.max_staleness.is_none() {
        anyhow::bail!("--consistency bounded needs --max-staleness");
    }
    let serializable = level == Consistency::Serializable;
    let req = RangeRequest {
        key,
        range_end,
        limit: a.limit,
        revision: a.rev,
        keys_only: a.keys_only,
        count_only: a.count_only,
        serializable,
        consistency: level as i32,
        min_revision: a.min_revision,
        max_staleness_ms: a.max_staleness.map_or(0, |d| d.as_millis().max(1) as i64),
        ..Default::default()
    };
    let resp = client.range(req).await?;
    printer::range(out, &resp, a.count_only, a.keys_only);
    Ok(())
}
