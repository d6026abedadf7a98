//! docker-compose.yml cannot run here (no Docker engine); this checks that it
//! parses and agrees with what the binaries and .env.example say.

use serde_yaml_ng::Value;
use std::collections::BTreeSet;

fn repo_file(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    std::fs::read_to_string(format!("{path}{name}")).unwrap()
}

fn compose() -> Value {
    let mut compose: Value = serde_yaml_ng::from_str(&repo_file("docker-compose.yml"))
        .expect("docker-compose.yml parses");
    // `<<: *processor` merge keys, as docker compose reads them.
    compose.apply_merge().expect("merge keys resolve");
    compose
}

/// Every `${NAME...}` the file interpolates.
fn interpolated(text: &str) -> BTreeSet<String> {
    text.split("${")
        .skip(1)
        .map(|rest| rest.split([':', '}', '-']).next().unwrap().to_string())
        .collect()
}

#[test]
fn services_depend_only_on_services_that_exist_and_have_health_checks() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for required in ["postgres", "kafka", "schema-registry", "mailpit", "init"] {
        assert!(names.contains(required), "service {required} missing");
    }
    for (name, service) in services {
        if let Some(depends) = service["depends_on"].as_mapping() {
            for (target, condition) in depends {
                let target = target.as_str().unwrap();
                assert!(
                    names.contains(target),
                    "{name:?} depends on unknown {target}"
                );
                // A service waits for a health check, or for a one-shot
                // service (restart "no") to finish successfully.
                match condition["condition"].as_str() {
                    Some("service_healthy") => assert!(
                        !services[target]["healthcheck"].is_null(),
                        "{target} is waited for but has no health check"
                    ),
                    Some("service_completed_successfully") => assert_eq!(
                        services[target]["restart"], "no",
                        "{name:?} waits for {target} to finish, but it is not a one-shot service"
                    ),
                    other => panic!("{name:?} -> {target}: condition {other:?}"),
                }
            }
        }
    }
}

#[test]
fn the_init_service_sets_exactly_what_the_tool_reads() {
    let compose = compose();
    let environment: BTreeSet<String> = compose["services"]["init"]["environment"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    // The variables `psymatch` reads (see its --help and runtime::db).
    let read: BTreeSet<String> = [
        "KAFKA_BROKERS",
        "SCHEMA_REGISTRY_URL",
        "DATABASE_URL",
        "PSYMATCH_CONTRACTS",
        "PROCESSOR_DB_PASSWORD",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(environment, read);
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_psymatch"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for variable in [
        "KAFKA_BROKERS",
        "SCHEMA_REGISTRY_URL",
        "PSYMATCH_CONTRACTS",
        "PROCESSOR_DB_PASSWORD",
    ] {
        assert!(
            help.contains(variable),
            "psymatch --help does not mention {variable}"
        );
    }
    // The contracts directory the init service points at is what the image copies.
    let dockerfile = repo_file("Dockerfile");
    assert!(dockerfile.contains("COPY topics.yaml /etc/psymatch/topics.yaml"));
    assert!(dockerfile.contains("COPY schemas /etc/psymatch/schemas"));
}

#[test]
fn every_processor_runs_from_the_image_with_the_runtime_settings() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let dockerfile = repo_file("Dockerfile");
    let mut processors = 0;
    for (name, service) in services {
        let Some(entrypoint) = service["entrypoint"][0].as_str() else {
            continue;
        };
        processors += 1;
        // The image holds every psymatch binary under /usr/local/bin.
        assert!(
            entrypoint.starts_with("/usr/local/bin/psymatch-"),
            "{name:?}: {entrypoint}"
        );
        assert!(dockerfile.contains("-name 'psymatch*'"));
        let environment = service["environment"].as_mapping().unwrap();
        for variable in [
            "KAFKA_BROKERS",
            "SCHEMA_REGISTRY_URL",
            "DATABASE_URL",
            "HTTP_LISTEN",
        ] {
            assert!(
                environment.contains_key(variable),
                "{name:?} lacks {variable}"
            );
        }
        // Least privilege: each processor connects as its own role.
        let schema = entrypoint
            .trim_start_matches("/usr/local/bin/psymatch-")
            .replace('-', "_");
        let url = environment[&serde_yaml_ng::Value::from("DATABASE_URL")]
            .as_str()
            .unwrap();
        assert!(
            url.starts_with(&format!("postgres://psymatch_{schema}:")),
            "{name:?} connects as {url}"
        );
    }
    assert!(processors >= 4, "{processors} processor services");
}

#[test]
fn env_example_documents_every_interpolated_variable() {
    let example = repo_file(".env.example");
    let documented: BTreeSet<String> = example
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect();
    let used = interpolated(&repo_file("docker-compose.yml"));
    assert!(!used.is_empty());
    assert_eq!(
        used, documented,
        "every ${{VAR}} of docker-compose.yml is in .env.example and vice versa"
    );
}

/// The text between the first `open` and the `close` after it.
fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let rest = text.split_once(open).map(|(_, rest)| rest).unwrap();
    rest.split_once(close).map_or(rest, |(inside, _)| inside)
}

/// The settings of the local stack's broker (scripts/kafka-broker) that do
/// not name a host, port or path: compose's broker must have each of them.
#[test]
fn the_compose_broker_has_the_version_and_settings_of_the_local_stack() {
    let compose = compose();
    let kafka = &compose["services"]["kafka"];
    let pom = repo_file("ops/kafka/pom.xml");
    let version = between(&pom, "<kafka.version>", "<");
    assert_eq!(
        kafka["image"].as_str().unwrap(),
        format!("apache/kafka:{version}")
    );
    let script = repo_file("scripts/kafka-broker");
    let properties = between(&script, "<<PROPS\n", "\nPROPS");
    let local: Vec<(&str, &str)> = properties
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .filter(|(_, value)| !value.contains('$'))
        .filter(|(key, _)| !matches!(*key, "listener.security.protocol.map" | "node.id"))
        .collect();
    assert!(local.len() >= 15, "{local:?}");
    for (key, value) in local {
        let name = format!("KAFKA_{}", key.to_ascii_uppercase().replace('.', "_"));
        let theirs = match &kafka["environment"][name.as_str()] {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            other => panic!(
                "docker-compose.yml: kafka lacks {name} (scripts/kafka-broker sets {key}={value}): {other:?}"
            ),
        };
        assert_eq!(theirs, value, "{name}");
    }
}
