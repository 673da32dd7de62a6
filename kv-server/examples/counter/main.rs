//! Example application: bumps a shared counter, against a remote cluster or an embedded
//! member, chosen by configuration; the application code (`app.rs`) is the same either way.
//!
//! ```sh
//! cargo run --example counter -- --remote http://127.0.0.1:2379,http://127.0.0.1:12379 --times 10
//! cargo run --example counter -- --embedded ./counter-data --times 10
//! ```

mod app;

use anyhow::Context;
use clap::Parser;

/// Bump a counter kept in raftkv.
#[derive(Parser, Debug)]
struct Args {
    /// Endpoints of a running cluster (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "embedded", required_unless_present = "embedded")]
    remote: Vec<String>,
    /// Run a one-member store in this process, with its data in this directory.
    #[arg(long)]
    embedded: Option<std::path::PathBuf>,
    /// The counter's key.
    #[arg(long, default_value = "counter")]
    key: String,
    /// How many times to bump it.
    #[arg(long, default_value_t = 1)]
    times: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.embedded {
        Some(dir) => {
            let cfg = kv_server::ServerConfig {
                data_dir: dir.clone(),
                listen_client_urls: vec!["http://127.0.0.1:0".into()],
                listen_peer_urls: vec!["http://127.0.0.1:0".into()],
                ..kv_server::ServerConfig::default()
            };
            let member = kv_server::embed(cfg).await.context("starting the embedded member")?;
            let result = bump_all(&member, &args).await;
            member.stop().await.context("stopping the embedded member")?;
            result
        }
        None => {
            let client = kv_client::Client::connect(&args.remote, kv_client::Options::default()).await?;
            bump_all(&client, &args).await
        }
    }
}

async fn bump_all<A: kv_api::KvApi>(api: &A, args: &Args) -> anyhow::Result<()> {
    for _ in 0..args.times {
        app::bump(api, &args.key).await?;
    }
    println!("{}", app::read(api, &args.key).await?);
    Ok(())
}
