//! `kvctl completion <shell>`: prints the shell's completion script.

use clap::CommandFactory;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub shell: clap_complete::Shell,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    clap_complete::generate(a.shell, &mut crate::Cli::command(), "kvctl", &mut std::io::stdout());
    Ok(())
}
