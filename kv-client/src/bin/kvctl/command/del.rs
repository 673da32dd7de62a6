//! `kvctl del <key> [range_end]`

use kv_client::kv_api::etcdserverpb::DeleteRangeRequest;
use kv_client::Client;

use super::key_range;
use crate::printer;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub key: String,
    pub range_end: Option<String>,
    /// Delete every key with `key` as prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Delete every key >= `key`.
    #[arg(long)]
    pub from_key: bool,
    /// Print the deleted key-value pairs.
    #[arg(long)]
    pub prev_kv: bool,
}

pub async fn run(client: &Client, a: Args, out: printer::Format) -> anyhow::Result<()> {
    let (key, range_end) = key_range(&a.key, a.range_end.as_deref(), a.prefix, a.from_key)?;
    let resp = client.delete_range(DeleteRangeRequest { key, range_end, prev_kv: a.prev_kv }).await?;
    printer::delete(out, &resp);
    Ok(())
}
