//! ACLs from the contract on the secured three-node cluster: `psymatch acls
//! plan` lists exactly what `apply` then creates on a fresh prefix, each
//! principal is refused what topics.yaml does not give it (the matcher
//! reading patient commands, intake writing matching events) and allowed
//! what it does, drift is reported and left in place, and a processor
//! started before its ACLs exist stays up, unready, naming the topic and
//! the principal, until `acls apply` runs, and then works with exactly
//! those ACLs.

use psymatch_proof::processes::{refused_in_one_line, spawn, tool};
use psymatch_runtime::acls::{Acl, AclAdmin, Operation, Pattern, Resource};
use psymatch_runtime::testing::{TestBed, cluster, scratch_dir, stack_env};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use std::collections::BTreeSet;
use std::time::Duration;

/// The `psymatch` tool's output lines that start with `prefix`, without it.
fn lines_after(output: &std::process::Output, prefix: &str) -> BTreeSet<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(str::to_string)
        .collect()
}

/// The environment of the tool connecting as `principal`.
fn as_principal(principal: &str) -> Vec<(&'static str, Option<String>)> {
    cluster::up()
        .env(principal)
        .into_iter()
        .map(|(name, value)| {
            let name: &'static str = match name.as_str() {
                "KAFKA_SASL_USERNAME" => "KAFKA_SASL_USERNAME",
                "KAFKA_SASL_PASSWORD_FILE" => "KAFKA_SASL_PASSWORD_FILE",
                _ => "KAFKA_SSL_CA_FILE",
            };
            (name, Some(value))
        })
        .collect()
}

/// A client config for `principal`, built here rather than registered
/// (the test's own clients stay the bed's admin).
fn client_as(bed: &TestBed, principal: &str) -> ClientConfig {
    let vars = cluster::up().env(principal).into_iter().collect();
    let settings = psymatch_runtime::broker::Settings::from_vars(&vars).unwrap();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &bed.brokers);
    settings.apply(&mut config);
    config
}

fn ok(output: &std::process::Output) -> &std::process::Output {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_is_what_apply_creates_and_each_principal_gets_no_more() {
    let bed = TestBed::secured_without_acls(&stack_env("DATABASE_URL")).await;
    let group = ["--group-prefix", bed.prefix.as_str()];

    let plan = ok(&tool(&bed, &[], &[&["acls", "plan"][..], &group].concat())).clone();
    let planned: BTreeSet<String> = String::from_utf8_lossy(&plan.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(planned.len() > 40, "{planned:?}");
    let dry = ok(&tool(
        &bed,
        &[],
        &[&["acls", "apply", "--dry-run"][..], &group].concat(),
    ))
    .clone();
    assert_eq!(lines_after(&dry, "would create: "), planned);

    let applied = ok(&tool(&bed, &[], &[&["acls", "apply"][..], &group].concat())).clone();
    assert_eq!(lines_after(&applied, "created: "), planned);
    // What the cluster now holds for the plan's principals under this
    // bed's names is exactly the plan.
    let admin = AclAdmin::connect(&bed.brokers).unwrap();
    let principals: BTreeSet<String> = planned
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let mut held = BTreeSet::new();
    for principal in &principals {
        for acl in admin.describe(principal).unwrap() {
            if acl.name.starts_with(&bed.prefix) {
                held.insert(acl.to_string());
            }
        }
    }
    assert_eq!(held, planned);
    let again = ok(&tool(&bed, &[], &[&["acls", "apply"][..], &group].concat())).clone();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(&format!(
            "acls: {n} planned, 0 created, {n} present, 0 drift",
            n = planned.len()
        )),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // The matcher never sees patient commands; the events it reads it may.
    let refused = tool(
        &bed,
        &as_principal("matcher"),
        &["tail", "patient-commands", "--max", "1"],
    );
    refused_in_one_line(
        &refused,
        &format!(
            "topic {}patient-commands: TOPIC_AUTHORIZATION_FAILED for principal matcher",
            bed.prefix
        ),
    );
    let matcher: BaseConsumer = client_as(&bed, "matcher")
        .set("group.id", format!("{}matcher", bed.prefix))
        .create()
        .unwrap();
    for (topic, expected) in [
        (
            "patient-commands",
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED),
        ),
        ("patient-events", None),
    ] {
        let physical = format!("{}{topic}", bed.prefix);
        let metadata = matcher
            .fetch_metadata(Some(&physical), Duration::from_secs(10))
            .unwrap();
        assert_eq!(metadata.topics()[0].error(), expected, "{topic}");
    }

    // Intake writes patient events, never matching events.
    let intake: FutureProducer = client_as(&bed, "intake")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    let send = |topic: &str| {
        let topic = format!("{}{topic}", bed.prefix);
        let intake = intake.clone();
        async move {
            intake
                .send(
                    FutureRecord::to(&topic)
                        .key("k")
                        .payload("not read by anyone"),
                    Duration::from_secs(20),
                )
                .await
                .map(|_| ())
                .map_err(|(error, _)| error.rdkafka_error_code())
        }
    };
    assert_eq!(
        send("matching-events").await,
        Err(Some(
            rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
        ))
    );
    assert_eq!(send("patient-events").await, Ok(()));

    // An ACL nobody planned is drift: reported, not deleted.
    let extra = Acl {
        principal: "User:matcher".into(),
        resource: Resource::Topic,
        pattern: Pattern::Literal,
        name: format!("{}scraping-events", bed.prefix),
        operation: Operation::Read,
    };
    let created = admin.create(std::slice::from_ref(&extra)).unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let drift = ok(&tool(&bed, &[], &[&["acls", "apply"][..], &group].concat())).clone();
    assert_eq!(
        lines_after(&drift, "drift: "),
        BTreeSet::from([format!("{extra} (not in the plan; left in place)")])
    );
    assert!(admin.describe("User:matcher").unwrap().contains(&extra));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_without_its_acls_waits_unready_naming_them_and_works_once_applied() {
    let bed = TestBed::secured_without_acls(&stack_env("DATABASE_URL")).await;
    let dir = scratch_dir("acls-intake");
    let (mut intake, port, log) =
        spawn("psymatch-intake", bed.env_as_own_principal("intake"), &dir);
    let readiness = || async {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/health/readiness"))
            .await
            .ok()?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.ok()?;
        Some((
            status,
            body["checks"]["access"].as_str().unwrap_or("").to_string(),
        ))
    };
    let refusal = "TOPIC_AUTHORIZATION_FAILED for principal intake: run psymatch acls apply";
    bed.wait_for(
        "readiness names the missing ACL",
        Duration::from_secs(60),
        || async {
            readiness()
                .await
                .is_some_and(|(status, access)| status == 503 && access.contains(refusal))
        },
    )
    .await;
    let (_, access) = readiness().await.unwrap();
    assert!(
        access.starts_with(&format!("topic {}", bed.prefix)),
        "{access}"
    );
    assert!(
        intake.0.try_wait().unwrap().is_none(),
        "intake keeps running"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains(refusal)).count(),
        1,
        "one line, not one per probe: {text}"
    );

    // Its topics, but not yet its group: readiness names the group.
    let topics_only: Vec<Acl> = psymatch_runtime::acls::plan(
        &psymatch_runtime::contracts::Contracts::embedded().topics,
        &bed.acl_options(),
    )
    .into_iter()
    .filter(|acl| acl.principal == "User:intake" && acl.resource == Resource::Topic)
    .collect();
    let admin = AclAdmin::connect(&bed.brokers).unwrap();
    assert!(
        admin
            .create(&topics_only)
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    let group_refused = format!(
        "group {}intake: GROUP_AUTHORIZATION_FAILED for principal intake: run psymatch acls apply",
        bed.prefix
    );
    bed.wait_for(
        "readiness names the group",
        Duration::from_secs(60),
        || async {
            readiness()
                .await
                .is_some_and(|(status, access)| status == 503 && access == group_refused)
        },
    )
    .await;

    let applied = bed.apply_acls().await;
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    bed.wait_for(
        "ready once the ACLs exist",
        Duration::from_secs(60),
        || async { readiness().await.is_some_and(|(status, _)| status == 200) },
    )
    .await;
    // With exactly its ACLs, intake does its work.
    bed.registers("acl-1").await;
    let status = intake.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
}
