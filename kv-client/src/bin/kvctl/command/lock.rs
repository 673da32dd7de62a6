//! `kvctl lock NAME [-- CMD ARGS...]`: takes the lock on a lease kvctl keeps alive; prints the
//! lock's key and fencing token and holds the lock until interrupted, or runs CMD while holding
//! it (with `KVCTL_LOCK_KEY` and `KVCTL_LOCK_TOKEN` in its environment) and exits with its
//! status. The lock is released either way.

use std::time::Duration;

use kv_client::Client;

/// The TTL of the lease the lock is held with: kvctl renews it; if kvctl dies, the lock ends
/// this long after.
const LEASE_TTL: i64 = 10;

/// Longest wait for the lock.
const WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(clap::Args, Debug)]
pub struct Args {
    pub name: String,
    /// The command to run while holding the lock.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn run(client: &Client, a: Args) -> anyhow::Result<()> {
    let lease = client.lease_grant(LEASE_TTL, 0).await?.id;
    let mut kept = client.keep_alive(lease).await?;
    let locked = tokio::select! {
        l = client.lock(a.name.as_bytes(), lease, WAIT) => l?,
        why = kept.lost() => anyhow::bail!("the lock's lease was lost while waiting: {why}"),
    };
    let key = String::from_utf8_lossy(&locked.key).into_owned();
    let outcome = match a.command.split_first() {
        None => {
            println!("{key}\n{}", locked.token);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Ok(()),
                why = kept.lost() => Err(anyhow::anyhow!("lock {key} lost: {why}")),
            }
        }
        Some((program, args)) => {
            let mut child = std::process::Command::new(program)
                .args(args)
                .env("KVCTL_LOCK_KEY", &key)
                .env("KVCTL_LOCK_TOKEN", locked.token.to_string())
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
            // Polled, so that the loss of the lock can stop the command at once.
            loop {
                if let Some(status) = child.try_wait()? {
                    break if status.success() {
                        Ok(())
                    } else {
                        Err(anyhow::anyhow!("{program} exited with {status}"))
                    };
                }
                if let kv_client::LeaseState::Lost(why) = kept.state() {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(anyhow::anyhow!("lock {key} lost while {program} ran: {why}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let _ = client.unlock(&locked).await;
    let _ = client.lease_revoke(lease).await;
    outcome
}
