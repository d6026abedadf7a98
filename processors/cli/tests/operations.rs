//! The operating surface agrees with itself: Prometheus scrapes every
//! processor service of docker-compose.yml on the port its HTTP_LISTEN
//! gives, `promtool` accepts the configuration and passes the alert rules'
//! unit tests, and every psymatch metric the alerts and the Grafana
//! dashboard use is one a processor defines.

use serde_yaml_ng::Value;
use std::collections::BTreeSet;
use std::process::Command;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
}

fn read(name: &str) -> String {
    std::fs::read_to_string(repo().join(name)).unwrap()
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("ops/prometheus"))
        .output()
        .expect("promtool is installed (scripts/install-tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn promtool_accepts_the_configuration_and_the_alert_tests_pass() {
    let config = promtool(&["check", "config", "prometheus.yml"]);
    assert!(config.contains("8 rules found"), "{config}");
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn prometheus_scrapes_every_processor_service() {
    let mut compose: Value = serde_yaml_ng::from_str(&read("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    let mut processors = BTreeSet::new();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        if service["entrypoint"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("/usr/local/bin/psymatch-"))
        {
            let listen = service["environment"]["HTTP_LISTEN"].as_str().unwrap();
            let port = listen.rsplit(':').next().unwrap();
            processors.insert(format!("{}:{port}", name.as_str().unwrap()));
        }
    }
    let prometheus: Value =
        serde_yaml_ng::from_str(&read("ops/prometheus/prometheus.yml")).unwrap();
    let targets: BTreeSet<String> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(targets, processors);
}

/// Every `psymatch_<name>` in `text`, without histogram suffixes.
fn metrics_in(text: &str) -> BTreeSet<String> {
    text.split("psymatch_")
        .skip(1)
        .map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            name.trim_end_matches("_bucket").to_string()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn alerts_and_the_dashboard_use_metrics_the_processors_define() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("ops/grafana/dashboards/psymatch.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut used = metrics_in(&read("ops/prometheus/alerts.yml"));
    for panel in panels {
        let expr = panel["targets"][0]["expr"].as_str().unwrap();
        used.extend(metrics_in(expr));
    }
    let mut sources = String::new();
    for entry in std::fs::read_dir(repo().join("processors")).unwrap() {
        let src = entry.unwrap().path().join("src");
        for file in walk(&src) {
            sources.push_str(&std::fs::read_to_string(file).unwrap());
        }
    }
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !sources.contains(&format!("\"{name}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "not defined by any processor: {missing:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn commands_that_need_the_broker_say_in_one_line_that_it_is_unreachable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{closed}");
    for args in [
        &["topics", "apply"][..],
        &["tail", "patient-commands", "--idle-timeout", "1"],
        &["publish", "patient-commands", "-"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_psymatch"))
            .args(args)
            .env("KAFKA_BROKERS", &brokers)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "error: the Kafka broker at {brokers} is unreachable (KAFKA_BROKERS)"
            )),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn the_stack_reports_postgresql_beside_its_other_services() {
    let output = Command::new(repo().join("scripts/stack"))
        .arg("status")
        .env(
            "DATABASE_URL",
            psymatch_runtime::testing::stack_env("DATABASE_URL"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("postgresql: running")),
        "{text}"
    );
}

#[test]
fn search_takes_its_surface_and_token_after_the_subcommand_too() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let matcher = format!("http://127.0.0.1:{closed}");
    let output = Command::new(env!("CARGO_BIN_EXE_psymatch"))
        .args(["search", "status", "p-1", "--token", "0123456789abcdef0123"])
        .args(["--matcher", &matcher])
        .env_remove("PSYMATCH_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    // Parsed: it tried the matcher (closed here) instead of refusing the flags.
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
    assert!(stderr.contains(&matcher), "{stderr}");
    let help = Command::new(env!("CARGO_BIN_EXE_psymatch"))
        .args(["search", "status", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--token") && help.contains("--matcher"),
        "{help}"
    );
}

#[test]
fn tail_names_the_topics_there_are() {
    let output = Command::new(env!("CARGO_BIN_EXE_psymatch"))
        .args(["tail", "patient-event", "--idle-timeout", "1"])
        .env(
            "KAFKA_BROKERS",
            psymatch_runtime::testing::stack_env("KAFKA_BROKERS"),
        )
        .env_remove("TOPIC_PREFIX")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("unknown topic patient-event; topics.yaml declares")
            && stderr.contains("patient-events"),
        "{stderr}"
    );
}
