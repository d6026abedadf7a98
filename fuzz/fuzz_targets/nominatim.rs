//! Nominatim's search answer (format=jsonv2).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = psymatch_geocoder::nominatim::parse_search(data);
});
