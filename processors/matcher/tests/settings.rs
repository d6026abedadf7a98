//! A misspelt setting stops the matcher at start with the name it
//! resembles, before it touches the broker or the database.

use std::process::Command;

#[test]
fn a_misspelt_setting_stops_the_matcher_with_the_name_it_resembles() {
    let output = Command::new(env!("CARGO_BIN_EXE_psymatch-matcher"))
        .env("INQUIRIES_PER_PATIENTS", "2")
        // Nothing answers here: an error about these would mean the
        // matcher got past reading its settings.
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("INQUIRIES_PER_PATIENTS (did you mean INQUIRIES_PER_PATIENT?)"),
        "{stderr}"
    );
}
