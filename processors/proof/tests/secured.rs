//! psymatch on a Kafka cluster shaped like its users' (the three-node
//! SASL_SSL/SCRAM cluster of `scripts/kafka-cluster`): topics are created
//! with three replicas and two to acknowledge; intake runs over SASL_SSL as
//! a processor; `psymatch tail` reads with the same settings; and a wrong
//! password, a missing CA or a plaintext client are each refused in one
//! line that says what to do.

use psymatch_intake::Intake;
use psymatch_proof::processes::{binary, tool as psymatch};
use psymatch_runtime::testing::{KillOnDrop, Running, TestBed, free_port, scratch_dir};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn intake_and_the_tool_work_over_sasl_ssl_on_three_replicas_and_refusals_say_what_to_do() {
    let bed = TestBed::secured().await;

    // Three replicas of every topic, two of them to acknowledge.
    let consumer: BaseConsumer = psymatch_runtime::broker::client(&bed.brokers)
        .create()
        .unwrap();
    let topic = format!("{}patient-events", bed.prefix);
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions();
    assert!(!partitions.is_empty());
    for partition in partitions {
        assert_eq!(partition.replicas().len(), 3, "{topic}/{}", partition.id());
    }

    let intake = Running::start(Intake, bed.config("intake"));
    bed.registers("secured-1").await;
    intake.stop().await;

    let read = psymatch(
        &bed,
        &[],
        &[
            "tail",
            "patient-events",
            "--matching",
            "secured-1",
            "--until",
            "patient.registered",
        ],
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(String::from_utf8_lossy(&read.stdout).contains("patient.registered"));

    // kcat, as documented, with the operator's settings: Debian's kcat on a
    // librdkafka that can log in with SCRAM to Kafka 4.
    let operator = psymatch_runtime::testing::cluster::up().env("operator");
    let kcat =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kcat"))
            .args(["-C", "-t", &topic, "-e", "-q", "-f", "%k %h\n"])
            .env("KAFKA_BROKERS", &bed.brokers)
            .envs(operator)
            .output()
            .expect("scripts/kcat");
    let shown = String::from_utf8_lossy(&kcat.stdout);
    assert!(
        kcat.status.success()
            && shown.contains("secured-1 ")
            && shown.contains("event_type=patient.registered"),
        "{shown}{}",
        String::from_utf8_lossy(&kcat.stderr)
    );

    let dir = scratch_dir("secured-refusals");
    let wrong = dir.join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let refusals = [
        (
            vec![(
                "KAFKA_SASL_PASSWORD_FILE",
                Some(wrong.display().to_string()),
            )],
            "SASL authentication failed for principal admin: check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD_FILE and KAFKA_SASL_MECHANISM",
        ),
        (
            vec![("KAFKA_SSL_CA_FILE", None)],
            "the brokers' TLS certificate is not trusted: set KAFKA_SSL_CA_FILE to the CA that signed it",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", None),
                ("KAFKA_SASL_MECHANISM", None),
                ("KAFKA_SASL_USERNAME", None),
                ("KAFKA_SASL_PASSWORD_FILE", None),
                ("KAFKA_SSL_CA_FILE", None),
            ],
            "set KAFKA_SECURITY_PROTOCOL",
        ),
    ];
    for (env, expected) in refusals {
        let out = psymatch(&bed, &env, &["tail", "patient-events", "--max", "1"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("not-the-password"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_refused_its_login_stays_up_unready_and_says_why_in_one_line() {
    let bed = TestBed::secured().await;
    let dir = scratch_dir("secured-intake");
    let wrong = dir.join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let port = free_port();
    let mut env: Vec<(String, String)> = bed
        .env("intake")
        .into_iter()
        .filter(|(name, _)| name != "KAFKA_SASL_USERNAME" && name != "KAFKA_SASL_PASSWORD_FILE")
        .collect();
    env.extend([
        ("KAFKA_SASL_USERNAME".to_string(), "intake".to_string()),
        (
            "KAFKA_SASL_PASSWORD_FILE".to_string(),
            wrong.display().to_string(),
        ),
        ("HTTP_LISTEN".to_string(), format!("127.0.0.1:{port}")),
    ]);
    let log = dir.join("intake.log");
    let binary = binary("psymatch-intake").unwrap();
    let mut intake = KillOnDrop::spawn(binary.to_str().unwrap(), &env, &log);
    let refused = "SASL authentication failed for principal intake";
    bed.wait_for(
        "readiness names the refused login",
        Duration::from_secs(60),
        || async {
            // Not listening yet is not an answer.
            let Ok(response) =
                reqwest::get(format!("http://127.0.0.1:{port}/health/readiness")).await
            else {
                return false;
            };
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            status == 503
                && body["checks"]["broker"]
                    .as_str()
                    .is_some_and(|b| b.contains(refused))
        },
    )
    .await;
    assert!(
        intake.0.try_wait().unwrap().is_none(),
        "intake keeps running"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(refused)).collect();
    assert!(!lines.is_empty(), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    let status = intake.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
}

/// The `sh` block of docs/operations.md's "Connecting to a managed Kafka
/// and PostgreSQL", as a reader copies it.
fn managed_guide() -> String {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    let section = guide
        .split("### Connecting to a managed Kafka and PostgreSQL")
        .nth(1)
        .expect("the guide's section");
    let block = section.split("```sh\n").nth(1).expect("its sh block");
    block.split("```").next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_managed_kafka_guide_works_as_written_on_the_secured_cluster() {
    let cluster = psymatch_runtime::testing::cluster::up();
    let ca = psymatch_runtime::testing::tls::Ca::new("managed PostgreSQL CA");
    let postgres = psymatch_runtime::testing::OwnPostgres::start_tls(&ca);
    let port = postgres
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let users = cluster.dir.join("users");
    let file = |path: std::path::PathBuf| path.display().to_string();
    // The service's values, in place of the guide's <...>.
    let values = [
        ("<bootstrap servers>", cluster.brokers.clone()),
        ("<admin user>", "admin".to_string()),
        ("<admin password file>", file(users.join("admin.password"))),
        ("<Kafka CA file>", file(cluster.dir.join("ca.pem"))),
        (
            "<registry URL>",
            psymatch_runtime::testing::stack_env("SCHEMA_REGISTRY_URL"),
        ),
        ("<owner>", "postgres".to_string()),
        ("<host>", "127.0.0.1".to_string()),
        ("<port>", port),
        ("<database>", "postgres".to_string()),
        ("<PostgreSQL CA file>", file(ca.cert.clone())),
        (
            "<matcher password file>",
            file(users.join("matcher.password")),
        ),
    ];
    let mut script = String::from("set -u\n");
    for line in managed_guide().lines() {
        let mut line = line.to_string();
        for (placeholder, value) in &values {
            line = line.replace(placeholder, value);
        }
        let command = line.split("   #").next().unwrap().trim().to_string();
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        assert!(
            !command.contains("<"),
            "a placeholder the test does not fill: {command}"
        );
        // "# refused: <text>": the command must fail, saying that.
        match line.split("# refused: ").nth(1) {
            Some(said) => script.push_str(&format!(
                "if {command} 2>refused.err; then echo 'not refused: {command}'; exit 1; fi\n\
                 grep -qF '{said}' refused.err || {{ cat refused.err; exit 1; }}\n\
                 [ \"$(wc -l < refused.err)\" -eq 1 ] || {{ cat refused.err; exit 1; }}\n"
            )),
            None if command.starts_with("export ") => script.push_str(&format!("{command}\n")),
            None => script.push_str(&format!(
                "{command} || {{ echo 'failed: {}'; exit 1; }}\n",
                command.replace('\'', "")
            )),
        }
    }
    let dir = scratch_dir("managed-guide");
    let bin = binary("psymatch").unwrap();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let prefix = format!("m{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let run = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &dir)
        // Apart from other runs on the same cluster.
        .env("TOPIC_PREFIX", &prefix)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{script}\n{said}");
    assert!(said.contains("acls: "), "{said}");
    assert!(said.contains("database migrated"), "{said}");
}
