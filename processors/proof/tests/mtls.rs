//! Mutual TLS instead of SASL, and a broker whose certificate has expired:
//! a broker of the test's own with an SSL listener that requires a client
//! certificate (its CN is the principal, as `ssl.principal.mapping.rules`
//! maps it) and a second SSL listener presenting an expired certificate.
//! The matcher's certificate reads what topics.yaml's ACLs give the matcher
//! and is refused patient commands; the expired certificate is refused in
//! one line that says so.

use psymatch_proof::processes::{refused_in_one_line, tool};
use psymatch_runtime::testing::tls::Ca;
use psymatch_runtime::testing::{OwnBroker, TestBed, free_port, people, scratch_dir, stack_env};
use std::path::{Path, PathBuf};

/// A PEM keystore as Kafka reads one: the key and the certificate in one file.
fn keystore(dir: &Path, name: &str, (cert, key): (PathBuf, PathBuf)) -> PathBuf {
    let path = dir.join(format!("{name}.keystore.pem"));
    let text = std::fs::read_to_string(key).unwrap() + &std::fs::read_to_string(cert).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_is_the_principal_and_an_expired_broker_certificate_is_named() {
    let dir = scratch_dir("mtls");
    let ca = Ca::new("psymatch mTLS CA");
    let server = keystore(
        &dir,
        "server",
        ca.issue("kafka-mtls", "IP:127.0.0.1,DNS:localhost"),
    );
    let expired = keystore(
        &dir,
        "expired",
        ca.issue_expired("kafka-expired", "127.0.0.1"),
    );
    let (mtls, stale) = (free_port(), free_port());
    let ca_file = ca.cert.display().to_string();
    let properties = |port: u16, controller: u16| {
        format!(
            "process.roles=broker,controller\nnode.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},MTLS://127.0.0.1:{mtls},STALE://127.0.0.1:{stale},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},MTLS://127.0.0.1:{mtls},STALE://127.0.0.1:{stale}\n\
             controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,MTLS:SSL,STALE:SSL,CONTROLLER:PLAINTEXT\n\
             listener.name.mtls.ssl.client.auth=required\n\
             listener.name.mtls.ssl.keystore.type=PEM\nlistener.name.mtls.ssl.keystore.location={server}\n\
             listener.name.mtls.ssl.truststore.type=PEM\nlistener.name.mtls.ssl.truststore.location={ca_file}\n\
             listener.name.stale.ssl.keystore.type=PEM\nlistener.name.stale.ssl.keystore.location={expired}\n\
             ssl.principal.mapping.rules=RULE:^CN=([^,]*).*$/$1/,DEFAULT\n\
             authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
             super.users=User:ANONYMOUS\nlog.dirs={{log.dirs}}\n\
             offsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n\
             auto.create.topics.enable=false\ngroup.initial.rebalance.delay.ms=0\n",
            server = server.display(),
            expired = expired.display(),
        )
    };
    let broker = OwnBroker::start_with(properties, "");
    let bed = TestBed::with(&broker.address(), &stack_env("DATABASE_URL")).await;
    let applied = bed.apply_acls().await;
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    bed.publish(
        "patient-events",
        &[people::registered(1, 30, (52.52, 13.40))],
    )
    .await;

    let (cert, key) = ca.issue("matcher", "DNS:matcher");
    let as_matcher = |port: u16| {
        vec![
            ("KAFKA_BROKERS", Some(format!("127.0.0.1:{port}"))),
            ("KAFKA_SECURITY_PROTOCOL", Some("ssl".to_string())),
            ("KAFKA_SSL_CA_FILE", Some(ca_file.clone())),
            (
                "KAFKA_SSL_CERTIFICATE_FILE",
                Some(cert.display().to_string()),
            ),
            ("KAFKA_SSL_KEY_FILE", Some(key.display().to_string())),
        ]
    };
    let allowed = tool(
        &bed,
        &as_matcher(mtls),
        &["tail", "patient-events", "--max", "1"],
    );
    assert!(
        allowed.status.success()
            && String::from_utf8_lossy(&allowed.stdout).contains("patient.registered"),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let refused = tool(
        &bed,
        &as_matcher(mtls),
        &["tail", "patient-commands", "--max", "1"],
    );
    refused_in_one_line(
        &refused,
        &format!(
            "TOPIC_AUTHORIZATION_FAILED for principal of the certificate {}",
            cert.display()
        ),
    );

    let stale_said = tool(
        &bed,
        &as_matcher(stale),
        &["tail", "patient-events", "--max", "1"],
    );
    refused_in_one_line(
        &stale_said,
        "the brokers' TLS certificate has expired or is not yet valid",
    );
}
