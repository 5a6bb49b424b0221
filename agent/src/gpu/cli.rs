//! (being written)
#[derive(Debug, clap::Args)]
pub struct GpuArgs {}

pub async fn run(_args: GpuArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
