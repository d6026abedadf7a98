//! The matching rules of DOMAIN.md as pure functions: whether a therapist
//! is a candidate for a patient (hard constraints 1-9, each rejection
//! naming its rule, so a person can read why a therapist was not
//! contacted), and the baseline ranking of candidates, replaceable as one
//! function. [`index`] finds the therapists near a patient on a grid in
//! memory.

pub mod index;
pub mod inquiries;
pub mod rules;

pub use rules::{
    Gender, GenderPreference, History, Patient, Procedure, Rule, Therapist, Verdict, check, rank,
};
