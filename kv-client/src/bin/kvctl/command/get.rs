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
    /// Read consistency: linearizable or serializable (etcdctl's l|s).
    #[arg(long, default_value = "l", value_parser = ["l", "s", "linearizable", "serializable"])]
    pub consistency: String,
}

pub async fn run(client: &mut Client, a: Args) -> anyhow::Result<()> {
    let (key, range_end) = key_range(&a.key, a.range_end.as_deref(), a.prefix, a.from_key)?;
    let serializable = matches!(a.consistency.as_str(), "s" | "serializable");
    let level = if serializable { Consistency::Serializable } else { Consistency::Linearizable };
    let req = RangeRequest {
        key,
        range_end,
        limit: a.limit,
        revision: a.rev,
        keys_only: a.keys_only,
        count_only: a.count_only,
        serializable,
        consistency: level as i32,
        ..Default::default()
    };
    let resp = client.range(req).await?;
    printer::range(&resp, a.count_only);
    Ok(())
}
