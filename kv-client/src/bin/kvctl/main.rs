//! `kvctl`: an etcdctl-style command-line client for raftkv.
//! Parses arguments, runs one verb, prints its result; on error prints one line to stderr and
//! exits with status 1.

mod command;
mod printer;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// raftkv command-line client.
#[derive(Parser, Debug)]
#[command(name = "kvctl", version, about)]
pub struct Cli {
    /// Comma-separated member client URLs.
    #[arg(
        long,
        global = true,
        env = "KVCTL_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Timeout of connecting and of each request, e.g. 5s, 500ms.
    #[arg(long = "command-timeout", global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Output format.
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value = "simple")]
    pub write_out: printer::Format,
    #[command(subcommand)]
    pub command: command::Command,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // A closed stdout ends kvctl quietly, as it ends other Unix tools (`kvctl watch k | head
    // -1`); Rust ignores SIGPIPE, so the next print would panic instead.
    sigpipe::reset();
    let cli = Cli::parse();
    match command::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error's chain holds.
            eprintln!("Error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
