//! (being written)
#[derive(Debug, clap::Args)]
pub struct MinerArgs {}

pub async fn run(_args: MinerArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
