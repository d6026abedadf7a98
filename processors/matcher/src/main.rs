//! `psymatch-matcher`: runs the matcher processor.

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matcher = psymatch_matcher::Matcher::new(psymatch_matcher::MatcherConfig::from_env()?);
    psymatch_runtime::app::run(matcher).await
}
