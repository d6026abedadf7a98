//! `psymatch-example`: the example processor (see `psymatch_runtime::example`),
//! configured from the environment like every processor.

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    psymatch_runtime::app::run(psymatch_runtime::example::Counter).await
}
