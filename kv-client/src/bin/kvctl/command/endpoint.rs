//! `kvctl endpoint status`

use kv_client::{Client, Options};

use crate::printer;

#[derive(clap::Subcommand, Debug)]
pub enum Verb {
    /// Status of every endpoint (one line each).
    Status,
}

pub async fn run(endpoints: &[String], opts: Options, verb: Verb) -> anyhow::Result<()> {
    match verb {
        Verb::Status => {
            let mut failed = Vec::new();
            for ep in endpoints {
                let status = match Client::connect(std::slice::from_ref(ep), opts).await {
                    Ok(c) => c.status().await,
                    Err(e) => Err(e),
                };
                match status {
                    Ok(s) => printer::status(ep, &s),
                    Err(e) => failed.push(format!("{ep}: {e}")),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("; "));
            }
            Ok(())
        }
    }
}
