//! The secured three-node cluster of `scripts/kafka-cluster` for tests:
//! started once per test process if it is not running (the script keeps
//! its data; `scripts/stack down` stops it with the stack).

use std::path::PathBuf;
use std::sync::OnceLock;

/// Where the cluster is and how its principals log in.
pub struct Cluster {
    /// Bootstrap servers (SASL_SSL).
    pub brokers: String,
    /// The directory of its CA, users and nodes.
    pub dir: PathBuf,
}

impl Cluster {
    /// The Kafka settings of `principal` (`admin`, a processor's name with
    /// underscores, `operator`).
    pub fn env(&self, principal: &str) -> Vec<(String, String)> {
        let file = |name: &str| self.dir.join(name).display().to_string();
        vec![
            ("KAFKA_SECURITY_PROTOCOL".into(), "sasl_ssl".into()),
            ("KAFKA_SASL_MECHANISM".into(), "SCRAM-SHA-512".into()),
            ("KAFKA_SASL_USERNAME".into(), principal.into()),
            (
                "KAFKA_SASL_PASSWORD_FILE".into(),
                file(&format!("users/{principal}.password")),
            ),
            ("KAFKA_SSL_CA_FILE".into(), file("ca.pem")),
        ]
    }

    /// Runs `scripts/kafka-cluster` with `args` (kill, start a node).
    pub fn script(&self, args: &[&str]) {
        let status = std::process::Command::new(repo().join("scripts/kafka-cluster"))
            .args(args)
            .env("PSYMATCH_CLUSTER_DIR", &self.dir)
            .status()
            .expect("scripts/kafka-cluster");
        assert!(status.success(), "scripts/kafka-cluster {args:?}");
    }
}

impl Cluster {
    /// The node id of the active controller (the KRaft quorum's leader).
    pub fn controller(&self) -> Option<i32> {
        let output = std::process::Command::new(repo().join("scripts/kafka-cluster"))
            .arg("controller")
            .env("PSYMATCH_CLUSTER_DIR", &self.dir)
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    }
}

fn repo() -> PathBuf {
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    repo.canonicalize().unwrap_or(repo)
}

/// The cluster, up (started and waited for on first use in this process).
pub fn up() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = std::env::var("PSYMATCH_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo().join(".stack/cluster"));
        let cluster = Cluster {
            brokers: String::new(),
            dir,
        };
        cluster.script(&["up"]);
        let env = std::fs::read_to_string(cluster.dir.join("env")).expect("the cluster's env");
        let brokers = env
            .lines()
            .find_map(|l| l.strip_prefix("export KAFKA_BROKERS="))
            .expect("KAFKA_BROKERS in the cluster's env")
            .to_string();
        Cluster { brokers, ..cluster }
    })
}
