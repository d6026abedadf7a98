//! Proofs of the whole system that anyone can rerun: the poison run
//! (`psymatch-proof poison`) and the processes it starts, which the
//! data-protection tests start too.

pub mod poison;
pub mod processes;
