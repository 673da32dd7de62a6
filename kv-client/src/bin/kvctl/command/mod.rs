//! The verbs, one file each.

mod compaction;
mod completion;
mod del;
mod elect;
mod endpoint;
mod get;
mod lease;
mod lock;
mod member;
mod put;
mod txn;
mod watch;

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
    /// Run a transaction: compares, then the requests on success, then those on failure
    /// (etcdctl's syntax, from stdin; prompts when stdin is a terminal).
    Txn(txn::Args),
    /// Compact the key history up to a revision.
    Compaction(compaction::Args),
    /// Inspect the endpoints.
    Endpoint {
        #[command(subcommand)]
        verb: endpoint::Verb,
    },
    /// Inspect the members.
    Member {
        #[command(subcommand)]
        verb: member::Verb,
    },
    /// Grant, revoke, keep alive, inspect and list leases.
    Lease {
        #[command(subcommand)]
        verb: lease::Verb,
    },
    /// Campaign in an election and lead until interrupted, or observe it (`--listen`).
    Elect(elect::Args),
    /// Take a lock (with a fencing token) and hold it until interrupted, or run a command under
    /// it (`-- CMD ARGS...`).
    Lock(lock::Args),
    /// Watch a key or a range of keys: every change, in order, until interrupted (with
    /// `-- CMD ARGS...`, runs CMD per event instead).
    Watch(watch::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(completion::Args),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = Options { timeout: cli.timeout };
    let out = cli.write_out;
    let connect = || Client::connect(&cli.endpoints, opts);
    match cli.command {
        Command::Put(a) => put::run(&connect().await?, a, out).await,
        Command::Get(a) => get::run(&connect().await?, a, out).await,
        Command::Del(a) => del::run(&connect().await?, a, out).await,
        Command::Txn(a) => txn::run(&connect().await?, a, out).await,
        Command::Compaction(a) => compaction::run(&connect().await?, a, out).await,
        Command::Endpoint { verb } => endpoint::run(&cli.endpoints, opts, verb, out).await,
        Command::Member { verb } => member::run(&connect().await?, verb, out).await,
        Command::Lease { verb } => lease::run(&connect().await?, verb, out).await,
        Command::Lock(a) => lock::run(&connect().await?, a).await,
        Command::Elect(a) => elect::run(&connect().await?, a).await,
        Command::Watch(a) => watch::run(&connect().await?, a, out).await,
        Command::Completion(a) => completion::run(a),
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
