//! OSRM's route and table answers; the first byte is the number of
//! destinations a table answer must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((expected, body)) = data.split_first() else {
        return;
    };
    let _ = psymatch_geocoder::osrm::parse_route(body);
    let _ = psymatch_geocoder::osrm::parse_table(body, *expected as usize);
});
