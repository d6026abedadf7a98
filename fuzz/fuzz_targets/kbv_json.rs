//! The 116117 search's JSON answer, then every practice normalised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use psymatch_scraper::{kbv, therapist};

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = kbv::parse_answer(data) {
        for raw in &answer.records {
            let _ = therapist::normalise(raw, &therapist::Implied::default());
        }
    }
});
