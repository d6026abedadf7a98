//! `psymatch-example`: the example processor (see `psymatch_runtime::example`),
//! configured from the environment like every processor.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    psymatch_runtime::app::run(psymatch_runtime::example::Counter).await
}
