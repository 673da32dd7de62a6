//! `kvctl compaction <revision>`

use kv_client::kv_api::etcdserverpb::CompactionRequest;
use kv_client::Client;

use crate::printer;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Discard every version older than this revision.
    pub revision: i64,
    /// Wait until the compaction is physically applied (raftkv always compacts at once).
    #[arg(long)]
    pub physical: bool,
}

pub async fn run(client: &Client, a: Args, out: printer::Format) -> anyhow::Result<()> {
    let resp = client.compact(CompactionRequest { revision: a.revision, physical: a.physical }).await?;
    printer::compaction(out, &resp, a.revision);
    Ok(())
}
