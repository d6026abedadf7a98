//! Proofs of the whole system that anyone can rerun: the poison run
//! (`psymatch-proof poison`), the chaos run (`psymatch-proof chaos`), the
//! README run (`psymatch-proof readme`), the erasure scanner
//! (`psymatch-proof erasure-scan`), and the processes they
//! and the data-protection tests start.

pub mod chaos;
pub mod elastic;
pub mod invariants;

pub use psymatch_runtime::testing::people;
pub mod poison;
pub mod processes;
pub mod readme;
pub mod repeats;
pub mod scan;
