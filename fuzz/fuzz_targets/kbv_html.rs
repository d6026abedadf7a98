//! A 116117 result page as HTML, then every practice normalised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use psymatch_scraper::{html, therapist};

fuzz_target!(|data: &[u8]| {
    let page = String::from_utf8_lossy(data);
    if let Ok(records) = html::parse_page(&page) {
        for raw in &records {
            let _ = therapist::normalise(raw, &therapist::Implied::default());
        }
    }
});
