//! The matcher: the matching rules of docs/design.md as pure functions
//! ([`rules`]: whether a therapist is a candidate for a patient, hard
//! constraints 1-9, each rejection naming its rule; the baseline ranking,
//! replaceable as one function), the candidate search on a grid in memory
//! ([`index`]), inquiries composed per practice ([`inquiries`]), and the
//! processor that runs them on the stream ([`processor`], state in
//! [`state`]).

pub mod index;
pub mod inquiries;
pub mod processor;
pub mod rules;
pub mod state;

pub use processor::{Matcher, MatcherConfig};
pub use rules::{
    Gender, GenderPreference, History, Patient, Procedure, Rule, Therapist, Verdict, check, rank,
};
