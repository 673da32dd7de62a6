//! `kvctl member list`

use kv_client::Client;

use crate::printer;

#[derive(clap::Subcommand, Debug)]
pub enum Verb {
    /// Every member: id, status, name, peer URLs, client URLs, learner or not.
    List,
}

pub async fn run(client: &Client, verb: Verb, out: printer::Format) -> anyhow::Result<()> {
    match verb {
        Verb::List => {
            let resp = client.member_list().await?;
            printer::members(out, &resp.members);
            Ok(())
        }
    }
}
