//! The verbs, one file each.

mod del;
mod endpoint;
mod get;
mod put;

use clap::Subcommand;
use kv_client::{Client, Options};

use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Put a key.
    Put(put::Args),
    /// Get a key or a range of keys.
    Get(get::Args),
    /// Delete a key or a range of keys.
    Del(del::Args),
    /// Inspect the endpoints.
    Endpoint {
        #[command(subcommand)]
        verb: endpoint::Verb,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = Options { timeout: cli.timeout };
    match cli.command {
        Command::Put(a) => put::run(&mut Client::connect(&cli.endpoints, opts).await?, a).await,
        Command::Get(a) => get::run(&mut Client::connect(&cli.endpoints, opts).await?, a).await,
        Command::Del(a) => del::run(&mut Client::connect(&cli.endpoints, opts).await?, a).await,
        Command::Endpoint { verb } => endpoint::run(&cli.endpoints, opts, verb).await,
    }
}

/// `key [range_end]` plus `--prefix` / `--from-key`, as etcdctl interprets them.
pub fn key_range(
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    match (range_end, prefix, from_key) {
        (Some(_), true, _) | (Some(_), _, true) | (None, true, true) => {
            anyhow::bail!("use only one of range_end, --prefix and --from-key")
        }
        (Some(end), false, false) => Ok((key.into(), end.into())),
        (None, true, false) => Ok((key.into(), kv_client::prefix_end(key.as_bytes()))),
        (None, false, true) => Ok((key.into(), vec![0])),
        (None, false, false) => Ok((key.into(), vec![])),
    }
}
