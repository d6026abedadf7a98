//! OAUTHBEARER with OIDC client credentials, as managed Kafka services and
//! identity providers (Keycloak, Entra ID, Okta) offer it: a broker of the
//! test's own validates RS256 tokens against an OIDC stand-in's keys
//! (`tests/python/oidc_provider.py`), librdkafka fetches and renews its
//! token from the stand-in's token endpoint with the client id and a
//! secret from a file, and the token's subject is the principal topics.yaml's
//! ACLs are applied to. Intake works under its ACLs; the matcher is
//! refused patient commands; a wrong secret is refused in one line.

use psymatch_proof::processes::{refused_in_one_line, spawn, tool};
use psymatch_runtime::testing::{
    KillOnDrop, OwnBroker, TestBed, free_port, scratch_dir, stack_env,
};
use std::path::Path;
use std::time::Duration;

/// The OIDC stand-in, its port once listening.
fn provider(dir: &Path) -> (KillOnDrop, u16) {
    let clients: String = [
        ("intake", "intake-secret-0123"),
        ("matcher", "matcher-secret-0123"),
    ]
    .iter()
    .map(|(id, secret)| format!("{id} {secret}\n"))
    .collect();
    std::fs::write(dir.join("clients"), clients).unwrap();
    let port_file = dir.join("port");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/oidc_provider.py"
    );
    let child = std::process::Command::new(stack_env("PSYMATCH_PYTHON"))
        .arg(script)
        .arg("--clients")
        .arg(dir.join("clients"))
        .arg("--port-file")
        .arg(&port_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the OIDC stand-in (scripts/install-tools makes the venv)");
    let child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return (child, port);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the OIDC stand-in did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker with a plaintext listener for the test's own clients (the
/// super user) and a SASL_PLAINTEXT OAUTHBEARER listener validating the
/// stand-in's tokens, with the StandardAuthorizer.
fn broker(oidc: u16, oauth_port: u16) -> OwnBroker {
    let issuer = format!("http://127.0.0.1:{oidc}");
    let properties = |port: u16, controller: u16| {
        format!(
            "process.roles=broker,controller\nnode.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},OAUTH://127.0.0.1:{oauth_port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},OAUTH://127.0.0.1:{oauth_port}\n\
             controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,OAUTH:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER\n\
             listener.name.oauth.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required ;\n\
             listener.name.oauth.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler\n\
             sasl.oauthbearer.jwks.endpoint.url={issuer}/jwks\n\
             sasl.oauthbearer.expected.audience=kafka\nsasl.oauthbearer.expected.issuer={issuer}\n\
             authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
             super.users=User:ANONYMOUS\nlog.dirs={{log.dirs}}\n\
             offsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n\
             auto.create.topics.enable=false\ngroup.initial.rebalance.delay.ms=0\n"
        )
    };
    // Kafka 4 fetches keys only from URLs it is told to allow.
    let allowed = format!("-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={issuer}/jwks");
    OwnBroker::start_with(properties, &allowed)
}

/// The settings of a client that logs in with OAUTHBEARER as `client`.
fn oauth_env(oauth: &str, oidc: u16, client: &str, secret_file: &Path) -> Vec<(String, String)> {
    [
        ("KAFKA_BROKERS", oauth.to_string()),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext".to_string()),
        ("KAFKA_SASL_MECHANISM", "OAUTHBEARER".to_string()),
        (
            "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
            format!("http://127.0.0.1:{oidc}/token"),
        ),
        ("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", client.to_string()),
        (
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE",
            secret_file.display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Settings as the tool's environment.
fn for_tool(env: &[(String, String)]) -> Vec<(&str, Option<String>)> {
    env.iter()
        .map(|(k, v)| (k.as_str(), Some(v.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_client_credentials_log_in_and_the_token_s_subject_gets_the_acls() {
    let dir = scratch_dir("oauthbearer");
    let (_provider, oidc) = provider(&dir);
    let oauth_port = free_port();
    let broker = broker(oidc, oauth_port);
    let oauth = format!("127.0.0.1:{oauth_port}");
    let bed = TestBed::with(&broker.address(), &stack_env("DATABASE_URL")).await;
    let applied = bed.apply_acls().await;
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    let secret = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path
    };

    // Intake logs in with its client credentials and works under its ACLs.
    let mut env: Vec<(String, String)> = bed
        .env("intake")
        .into_iter()
        .filter(|(k, _)| k != "KAFKA_BROKERS")
        .collect();
    env.extend(oauth_env(
        &oauth,
        oidc,
        "intake",
        &secret("intake.secret", "intake-secret-0123"),
    ));
    let (mut intake, port, log) = spawn("psymatch-intake", env, &dir);
    bed.wait_for(
        "intake ready over OAUTHBEARER",
        Duration::from_secs(60),
        || async {
            reqwest::get(format!("http://127.0.0.1:{port}/health/readiness"))
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    bed.registers("oauth-1").await;
    let issued: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{oidc}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        issued["intake"].as_u64().is_some_and(|n| n >= 1),
        "{issued}"
    );
    let status = intake.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("intake-secret-0123"),
        "the secret in the log"
    );

    // The matcher's token names the matcher: patient commands are refused.
    let matcher = oauth_env(
        &oauth,
        oidc,
        "matcher",
        &secret("matcher.secret", "matcher-secret-0123"),
    );
    let refused = tool(
        &bed,
        &for_tool(&matcher),
        &["tail", "patient-commands", "--max", "1"],
    );
    refused_in_one_line(&refused, "TOPIC_AUTHORIZATION_FAILED for principal matcher");
    let allowed = tool(
        &bed,
        &for_tool(&matcher),
        &["tail", "patient-events", "--max", "1"],
    );
    assert!(
        allowed.status.success() && String::from_utf8_lossy(&allowed.stdout).contains("oauth-1"),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );

    // A wrong secret: one line, without the secret.
    let wrong_secret = oauth_env(
        &oauth,
        oidc,
        "matcher",
        &secret("wrong.secret", "not-the-secret"),
    );
    let wrong = tool(
        &bed,
        &for_tool(&wrong_secret),
        &["tail", "patient-events", "--max", "1"],
    );
    let stderr = refused_in_one_line(&wrong, "no OAUTHBEARER token for principal matcher");
    assert!(!stderr.contains("not-the-secret"), "{stderr}");
}
