//! The matcher: the matching rules of docs/design.md as pure functions
//! ([`rules`]: whether a therapist is a candidate for a patient, hard
//! constraints 1-9, each rejection naming its rule; the baseline ranking,
//! replaceable as one function), the candidate search on a grid in memory
//! ([`index`]), inquiries composed per practice ([`inquiries`]), and the
//! processor that runs them on the stream ([`processor`]): its inputs
//! decoded into types at the edge ([`input`]), folded into the state
//! ([`fold`], [`commands`]; records in [`records`], kept in [`state`]),
//! and the batch's searches run step by step ([`search`]).

pub mod commands;
pub mod config;
pub mod contacts;
mod events;
pub mod fold;
pub mod index;
pub mod input;
pub mod inquiries;
pub mod processor;
pub mod queries;
pub mod records;
pub mod replay;
pub mod report;
pub mod rulebook;
pub mod rules;
pub mod search;
pub mod state;
pub mod why;

pub use config::MatcherConfig;
pub use processor::Matcher;
pub use rules::{
    Gender, GenderPreference, History, Patient, Procedure, Rule, Therapist, Verdict, check, rank,
};
