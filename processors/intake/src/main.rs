//! `psymatch-intake`: runs the intake processor.

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    psymatch_runtime::app::run(psymatch_intake::Intake).await
}
