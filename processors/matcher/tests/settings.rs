//! Settings the matcher cannot run on stop it at start, before it touches
//! the broker or the database: a misspelt variable with the name it
//! resembles, a rules file with the file, the field and the reason.

use std::process::{Command, Output};

/// Runs the matcher binary with `vars` and nothing to connect to: an
/// error about the broker or the database would mean the matcher got past
/// reading its settings.
fn start_with(vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_psymatch-matcher"));
    command
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("RUST_LOG", "error");
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().unwrap()
}

#[test]
fn a_misspelt_setting_stops_the_matcher_with_the_name_it_resembles() {
    let output = start_with(&[("MATCHER_RULE", "rules.yaml")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("MATCHER_RULE (did you mean MATCHER_RULES?)"),
        "{stderr}"
    );
}

#[test]
fn a_bad_rules_file_stops_the_matcher_with_the_file_the_field_and_the_reason() {
    let dir = std::env::temp_dir().join(format!("psymatch-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let baseline = psymatch_matcher::rulebook::BASELINE;
    let cases = [
        (
            "unknown.yaml",
            format!("{baseline}\nmax_km: 30\n"),
            "unknown field `max_km`",
        ),
        (
            "range.yaml",
            baseline.replace("follow_up_days: 7", "follow_up_days: 0"),
            "follow_up_days: 0 is outside 1 to 90",
        ),
        (
            "type.yaml",
            baseline.replace("default_distance_km: 25", "default_distance_km: far"),
            "default_distance_km: invalid type",
        ),
    ];
    for (name, text, reason) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let output = start_with(&[("MATCHER_RULES", path.to_str().unwrap())]);
        assert!(!output.status.success(), "{name} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let file = format!("rules file {}", path.display());
        assert!(
            stderr.contains(&file) && stderr.contains(reason),
            "{name}: {stderr}"
        );
        assert!(
            !stderr.contains("127.0.0.1:1"),
            "{name}: got to the broker: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
