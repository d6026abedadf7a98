//! Batches compressed by other teams' producers (Confluent's Python client
//! with gzip, snappy, lz4 and zstd) are read like any other: intake, whose
//! consumer is every processor's (the runtime's), answers each command,
//! and nothing goes to the dead-letter topic.

use psymatch_intake::Intake;
use psymatch_runtime::testing::{Running, TestBed, of_type, stack_env};
use std::process::Command;
use std::time::Duration;

const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];
const PER_CODEC: usize = 25;

#[tokio::test(flavor = "multi_thread")]
async fn every_compression_codec_of_other_producers_is_read() {
    let bed = TestBed::new().await;
    let intake = Running::start(Intake, bed.config("intake"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/confluent_client.py"
    );
    let topic = format!("{}patient-commands", bed.prefix);
    for codec in CODECS {
        let out = Command::new(stack_env("PSYMATCH_PYTHON"))
            .arg(script)
            .args([
                "produce_compressed",
                &bed.brokers,
                &bed.registry_url,
                &topic,
                codec,
            ])
            .arg(PER_CODEC.to_string())
            .output()
            .expect("the stack's Python");
        assert!(
            out.status.success(),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            r#"{"unsent": 0}"#
        );
    }
    // Each command names a patient intake does not know: one readable
    // rejection per command shows it was read and decoded.
    let records = bed
        .read_until("patient-events", Duration::from_secs(90), |r| {
            of_type(r, "command.rejected").len() >= CODECS.len() * PER_CODEC
        })
        .await;
    for codec in CODECS {
        let answered = of_type(&records, "command.rejected")
            .iter()
            .filter(|r| {
                r.payload()["subject_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&format!("{codec}-")))
            })
            .count();
        assert_eq!(answered, PER_CODEC, "{codec}");
    }
    let marks = psymatch_runtime::broker::Watermarks::connect(&bed.brokers).unwrap();
    let dlq = format!("{}patient-commands.dlq", bed.prefix);
    let dead: i64 = marks
        .of(&dlq, Duration::from_secs(10))
        .await
        .unwrap()
        .iter()
        .map(|(_, low, high)| high - low)
        .sum();
    assert_eq!(dead, 0, "nothing dead-lettered");
    intake.stop().await;
}
