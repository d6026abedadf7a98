//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the folder's
//! files at compile time but does not watch it for new ones.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
