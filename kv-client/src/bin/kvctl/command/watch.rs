//! `kvctl watch <key> [range_end] [-- CMD ARGS...]`: prints every change of the keys, in
//! order, until interrupted, resuming on another member if its member fails; with a command,
//! runs it once per event instead, with the event in its environment (etcdctl's variables).

use kv_client::kv_api::mvccpb::event::EventType;
use kv_client::kv_api::mvccpb::Event;
use kv_client::{Client, Watch};

use super::key_range;
use crate::printer;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub key: String,
    pub range_end: Option<String>,
    /// Watch every key with `key` as prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Watch every key >= `key`.
    #[arg(long)]
    pub from_key: bool,
    /// Start at this revision, replaying the history from there (0 = from now).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Print each key's previous value too.
    #[arg(long)]
    pub prev_kv: bool,
    /// A command to run for each event (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn run(client: &Client, a: Args, out: printer::Format) -> anyhow::Result<()> {
    let (key, range_end) = key_range(&a.key, a.range_end.as_deref(), a.prefix, a.from_key)?;
    if a.rev < 0 {
        anyhow::bail!("--rev must not be negative");
    }
    let mut watch = Watch::range(key, range_end).from_revision(a.rev);
    if a.prev_kv {
        watch = watch.prev_kv();
    }
    let mut watcher = client.watch(watch).await?;
    loop {
        let events = watcher.next().await?;
        match a.command.split_first() {
            Some((program, args)) => events.iter().try_for_each(|e| run_for(program, args, e))?,
            None => printer::watch_events(out, &events),
        }
    }
}

/// Runs `program` for one event, with etcdctl's environment variables describing it.
fn run_for(program: &str, args: &[String], e: &Event) -> anyhow::Result<()> {
    let kv = e.kv.clone().unwrap_or_default();
    let kind = if e.r#type == EventType::Delete as i32 { "DELETE" } else { "PUT" };
    let status = std::process::Command::new(program)
        .args(args)
        .env("ETCD_WATCH_REVISION", kv.mod_revision.to_string())
        .env("ETCD_WATCH_KEY", String::from_utf8_lossy(&kv.key).as_ref())
        .env("ETCD_WATCH_EVENT_TYPE", kind)
        .env("ETCD_WATCH_VALUE", String::from_utf8_lossy(&kv.value).as_ref())
        .status()
        .map_err(|err| anyhow::anyhow!("cannot run {program}: {err}"))?;
    if !status.success() {
        eprintln!("kvctl: {program} exited with {status}");
    }
    Ok(())
}
