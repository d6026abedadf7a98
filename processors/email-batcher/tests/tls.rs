//! SMTP over TLS to a relay presenting a self-signed certificate (as Proton
//! Mail Bridge does on 127.0.0.1), with credentials: trusted through
//! `SMTP_CA_CERT`, refused without it. The relay is a second maildev with
//! implicit TLS and a login, its certificate made by openssl for this test.

use psymatch_email_batcher::EmailBatcher;
use psymatch_email_batcher::config::BatcherConfig;
use psymatch_runtime::testing::{KillOnDrop, Running, TestBed, free_port, of_type, scratch_dir};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn templated(message_id: &str, to: &str) -> Value {
    json!({"event_type": "email.send_templated", "payload": {
        "message_id": message_id, "therapist_id": "t-tls", "template": "follow_up",
        "recipient": {"email": to, "salutation": "NONE", "title": null, "last_name": "Probe"},
        "variables": {"inquiry_id": "i-tls"}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_signed_relay_is_trusted_only_through_the_configured_certificate() {
    let dir = scratch_dir("smtp-tls");
    let (cert, key) = psymatch_runtime::testing::tls::self_signed(&dir, "relay");
    let (smtp, web) = (free_port(), free_port());
    let tools =
        std::env::var("PSYMATCH_TOOLS").unwrap_or_else(|_| "/var/tmp/psymatch-tools".into());
    let maildev = format!("{tools}/maildev/node_modules/.bin/maildev");
    let _relay = {
        let log = std::fs::File::create(dir.join("maildev.log")).unwrap();
        let child = std::process::Command::new(&maildev)
            .args([
                "--ip",
                "127.0.0.1",
                "--web-ip",
                "127.0.0.1",
                "--incoming-secure",
            ])
            .args(["--smtp", &smtp.to_string(), "--web", &web.to_string()])
            .args(["--incoming-user", "bridge", "--incoming-pass", "geheim"])
            .arg("--incoming-cert")
            .arg(&cert)
            .arg("--incoming-key")
            .arg(&key)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("maildev (scripts/install-tools)");
        KillOnDrop(child)
    };
    let bed = TestBed::new().await;
    bed.wait_for("the TLS relay listens", DEADLINE, || async {
        reqwest::get(format!("http://127.0.0.1:{web}/email"))
            .await
            .is_ok()
    })
    .await;

    let run = |trusted: bool| {
        let mut vars: BTreeMap<String, String> = [
            ("SMTP_HOST", "127.0.0.1".to_string()),
            ("SMTP_PORT", smtp.to_string()),
            ("SMTP_SECURITY", "tls".to_string()),
            ("SMTP_USERNAME", "bridge".to_string()),
            ("SMTP_PASSWORD", "geheim".to_string()),
            ("SMTP_ATTEMPTS", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if trusted {
            vars.insert("SMTP_CA_CERT".into(), cert.display().to_string());
        }
        EmailBatcher::new(BatcherConfig::from_vars(&vars).unwrap()).unwrap()
    };

    // Trusted through SMTP_CA_CERT: delivered, over TLS, with the login.
    let running = Running::start(run(true), bed.config("email_batcher"));
    bed.publish(
        "email-commands",
        &[templated("tls-trusted", "praxis-tls-2@example.org")],
    )
    .await;
    let records = bed
        .read_until("communication-events", DEADLINE, |r| !r.is_empty())
        .await;
    let first = records[0].payload();
    assert_eq!(
        records[0].envelope.as_ref().unwrap().event_type,
        "email.sent",
        "{first}"
    );
    let mails: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{web}/email"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["to"][0]["address"], "praxis-tls-2@example.org");
    assert_eq!(mails[0]["subject"], "Erinnerung: Anfrage i-tls");
    running.stop().await;

    // Without it the handshake fails and the failure is reported. (Last:
    // maildev itself exits when a client refuses its certificate.)
    let running = Running::start(run(false), bed.config("email_batcher"));
    bed.publish(
        "email-commands",
        &[templated("tls-untrusted", "praxis-tls-1@example.org")],
    )
    .await;
    let records = bed
        .read_until("communication-events", DEADLINE, |r| {
            !of_type(r, "email.failed").is_empty()
        })
        .await;
    let failed = of_type(&records, "email.failed")[0].payload();
    let reason = failed["reason"].as_str().unwrap().to_lowercase();
    assert!(
        reason.contains("certificate") || reason.contains("tls"),
        "{reason}"
    );
    running.stop().await;
}
