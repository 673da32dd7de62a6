//! `kvctl put <key> <value>`

use kv_client::kv_api::etcdserverpb::PutRequest;
use kv_client::Client;

use crate::printer;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub key: String,
    pub value: String,
    /// Print the previous key-value pair.
    #[arg(long)]
    pub prev_kv: bool,
    /// Attach the key to this lease (hexadecimal id, as `lease grant` prints it).
    #[arg(long, value_parser = super::lease::parse_id)]
    pub lease: Option<i64>,
}

pub async fn run(client: &Client, a: Args, out: printer::Format) -> anyhow::Result<()> {
    let req = PutRequest {
        key: a.key.into(),
        value: a.value.into(),
        prev_kv: a.prev_kv,
        lease: a.lease.unwrap_or(0),
        ..Default::default()
    };
    let resp = client.put(req).await?;
    printer::put(out, &resp);
    Ok(())
}
