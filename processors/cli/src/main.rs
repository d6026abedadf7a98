//! `psymatch`: the command-line tool for people operating psymatch.
//!
//! The kafka-avro-console-producer and -consumer of psymatch (Debian's kcat
//! has no Avro support), plus the set-up steps: apply `topics.yaml`, register
//! the schemas, migrate the database.

mod contacts;
mod letter;
mod search;

use contacts::{Format, IntakeArgs};
use search::{Channel, MatcherArgs, Outcome, SearchCommand};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use psymatch_runtime::codec::{self, Codec};
use psymatch_runtime::contracts::Contracts;
use psymatch_runtime::processor::Outgoing;
use psymatch_runtime::{db, envelope, topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "psymatch",
    version,
    about = "Operate psymatch: publish and read topics, apply contracts"
)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// Schema registry URL.
    #[arg(long, global = true, env = "SCHEMA_REGISTRY_URL", default_value = codec::DEFAULT_REGISTRY_URL)]
    registry: String,
    /// Read topics.yaml and schemas/ from this checkout instead of the copies
    /// compiled into this build.
    #[arg(long, global = true, env = "PSYMATCH_CONTRACTS")]
    contracts: Option<PathBuf>,
    /// Prefix of the physical topic names (isolated environments, as the
    /// processors' TOPIC_PREFIX): every command works on the prefixed
    /// topics and their schema subjects.
    #[arg(long, global = true, env = "TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish JSON records (one object, an array, or JSON lines) as Avro.
    ///
    /// Each record: {"event_type": "...", "payload": {...}} plus optional
    /// key, correlation_id, event_id, timestamp. Nothing is published unless
    /// every record fits the topic's schema. On patient-commands the details
    /// of a registration or update are sealed with the patient's key
    /// (crypto-shredding; needs DATABASE_URL with the owner's role).
    Publish {
        /// Topic to publish to.
        topic: String,
        /// File with the records, or - for standard input.
        file: String,
    },
    /// Print a topic's records as JSON lines (key, headers, decoded value).
    Tail {
        /// Topic to read.
        topic: String,
        /// Start at the end instead of the beginning.
        #[arg(long)]
        from_end: bool,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Stop when no record arrived for this many seconds.
        #[arg(long)]
        idle_timeout: Option<f64>,
        /// Print only records whose JSON line contains this text (an id,
        /// an event type).
        #[arg(long, value_name = "TEXT")]
        matching: Option<String>,
        /// Wait for a printed record containing this text (for a record
        /// still on its way), then stop once the topic is idle for
        /// --idle-timeout (1 s unless given); exit 1 if none came within
        /// --timeout.
        #[arg(long, value_name = "TEXT")]
        until: Option<String>,
        /// How long --until waits, in seconds.
        #[arg(long, default_value_t = 60.0, requires = "until")]
        timeout: f64,
    },
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// ACLs from topics.yaml's clients: the least each principal needs.
    ///
    /// Connect as a principal that may alter the cluster's ACLs (its super
    /// user). Example: psymatch acls apply --group-prefix psymatch-
    Acls {
        #[command(subcommand)]
        command: AclsCommand,
        #[command(flatten)]
        plan: AclPlanArgs,
    },
    /// Schema administration.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Apply the database migrations (DATABASE_URL, the owner's role); with
    /// PROCESSOR_DB_PASSWORD set, also give the processors' roles that password.
    Migrate,
    /// Ask the matcher about searches (its query surface, docs/queries.md).
    Search {
        #[command(subcommand)]
        command: SearchCommand,
        #[command(flatten)]
        matcher: MatcherArgs,
    },
    /// Write a patient's contact log (every practice emailed, every phone
    /// follow-up, with the answers) as CSV, or as the PDF letter for the
    /// insurer (with the patient's name and date of birth from intake: a
    /// staff token).
    ///
    /// Example: psymatch contacts tour-1 --format pdf --out contacts.pdf
    Contacts {
        /// The patient's pseudonymous id.
        patient: String,
        /// CSV for spreadsheets, PDF for the insurer.
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        matcher: MatcherArgs,
        #[command(flatten)]
        intake: IntakeArgs,
    },
    /// Record a practice's answer for a patient: publishes
    /// matching.record_answer for the open inquiry holding the patient at
    /// that practice (found through the matcher's query surface).
    ///
    /// Example: psymatch answer tour-1 t-17 accepted --channel phone
    Answer {
        /// The patient's pseudonymous id.
        patient: String,
        /// The practice that answered (the therapist the inquiry went to).
        therapist: String,
        /// The answer.
        outcome: Outcome,
        /// How the answer came.
        #[arg(long, value_enum, default_value = "phone")]
        channel: Channel,
        #[command(flatten)]
        matcher: MatcherArgs,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create missing topics, raise partitions, set configs; report drift.
    Apply {
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
        /// Replicas of every topic in this environment (topics.yaml's
        /// default is the single local broker's 1; 3 on a replicated cluster).
        #[arg(long, env = "TOPICS_REPLICATION_FACTOR")]
        replication_factor: Option<i32>,
        /// Replicas that must acknowledge a write (`min.insync.replicas`;
        /// 2 of 3 on a replicated cluster).
        #[arg(
            long,
            env = "TOPICS_MIN_INSYNC_REPLICAS",
            requires = "replication_factor"
        )]
        min_insync_replicas: Option<i32>,
    },
}

#[derive(Subcommand)]
enum AclsCommand {
    /// List the ACLs every client needs, one per line (nothing is asked of
    /// the broker).
    Plan,
    /// Create the planned ACLs that are missing; report ACLs of the same
    /// principals that the plan does not hold (drift, never deleted).
    Apply {
        /// Only show what would be created and the drift.
        #[arg(long)]
        dry_run: bool,
    },
}

/// What an ACL plan is for.
#[derive(clap::Args)]
struct AclPlanArgs {
    /// Prefix of the processors' consumer groups (the group of processor
    /// p is <prefix>p; CONSUMER_GROUP's default is psymatch-<processor>).
    #[arg(
        long,
        global = true,
        env = "ACLS_GROUP_PREFIX",
        default_value = "psymatch-"
    )]
    group_prefix: String,
    /// The relays run with RELAY=transactional: grant their transactional ids.
    #[arg(long, global = true)]
    transactional_relay: bool,
    /// A client's principal where it is not User:<client>, e.g.
    /// matcher=User:CN=matcher (repeat for more).
    #[arg(long = "principal", global = true, value_name = "CLIENT=PRINCIPAL")]
    principals: Vec<String>,
}

#[derive(Subcommand)]
enum SchemasCommand {
    /// Register every topic's value schema; fails on an incompatible change.
    Register,
    /// Check the schema files offline (bundling, docs, event types).
    Check,
}

/// `psymatch acls plan|apply`.
async fn acls(cli: &Cli, command: &AclsCommand, args: &AclPlanArgs) -> anyhow::Result<()> {
    use psymatch_runtime::acls;
    let contracts = contracts(cli)?;
    let mut options = acls::PlanOptions {
        topic_prefix: cli.topic_prefix.clone(),
        group_prefix: args.group_prefix.clone(),
        transactional_relay: args.transactional_relay,
        ..acls::PlanOptions::default()
    };
    for pair in &args.principals {
        let (client, principal) = pair
            .split_once('=')
            .filter(|(c, p)| !c.is_empty() && p.contains(':'))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--principal {pair}: write CLIENT=PRINCIPAL, e.g. matcher=User:CN=matcher"
                )
            })?;
        anyhow::ensure!(
            contracts.topics.client(client).is_some(),
            "--principal {pair}: topics.yaml declares no client {client}"
        );
        options
            .principals
            .insert(client.to_string(), principal.to_string());
    }
    let planned = acls::plan(&contracts.topics, &options);
    let AclsCommand::Apply { dry_run } = command else {
        for acl in &planned {
            println!("{acl}");
        }
        return Ok(());
    };
    let dry_run = *dry_run;
    let brokers = cli.brokers.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let admin = acls::AclAdmin::connect(&brokers)?;
        acls::apply(&admin, &planned, &options, dry_run).map_err(|reason| {
            anyhow::anyhow!("{reason} (ACLs need a principal allowed to describe and alter them, e.g. the cluster's super user)")
        })
    })
    .await??;
    let verb = if dry_run { "would create" } else { "created" };
    for acl in &applied.created {
        println!("{verb}: {acl}");
    }
    for acl in &applied.drift {
        println!("drift: {acl} (not in the plan; left in place)");
    }
    for (acl, reason) in &applied.refused {
        println!("NOT created: {acl}: {reason}");
    }
    println!(
        "acls: {} planned, {} {verb}, {} present, {} drift",
        applied.created.len() + applied.present.len() + applied.refused.len(),
        applied.created.len(),
        applied.present.len(),
        applied.drift.len()
    );
    if !applied.refused.is_empty() {
        bail!(
            "{} ACL(s) refused by the broker; see above",
            applied.refused.len()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn contracts(cli: &Cli) -> anyhow::Result<Contracts> {
    match &cli.contracts {
        Some(dir) => Contracts::from_dir(dir),
        None => Ok(Contracts::embedded().clone()),
    }
}

/// Fails in one line when the broker does not answer, before a command
/// that needs it starts.
async fn broker_answers(cli: &Cli) -> anyhow::Result<()> {
    let brokers = cli.brokers.clone();
    tokio::task::spawn_blocking(move || {
        psymatch_runtime::broker::check(&brokers, Duration::from_secs(5))
    })
    .await??;
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // `tail` decodes what anyone wrote: a lying length prefix costs at
    // most a few MiB, as in the processors (their default record size).
    codec::bound_allocations(1 << 20);
    // The processors' Kafka settings (TLS, SASL, KAFKA_OPTION_*), read
    // from the same environment: the tool connects as they do.
    psymatch_runtime::broker::use_settings(
        &cli.brokers,
        psymatch_runtime::broker::Settings::from_env()?,
    );
    psymatch_runtime::registry_client::use_settings(
        &cli.registry,
        psymatch_runtime::registry_client::RegistrySettings::from_env()?,
    );
    if matches!(
        cli.command,
        Command::Publish { .. }
            | Command::Tail { .. }
            | Command::Topics { .. }
            | Command::Acls {
                command: AclsCommand::Apply { .. },
                ..
            }
    ) {
        broker_answers(&cli).await?;
    }
    match &cli.command {
        Command::Publish { topic, file } => publish(&cli, topic, file).await,
        Command::Tail {
            topic,
            from_end,
            max,
            idle_timeout,
            matching,
            until,
            timeout,
        } => {
            let stop = Stop {
                max: *max,
                idle: idle_timeout.map(Duration::from_secs_f64),
                until: until.as_deref(),
                timeout: Duration::from_secs_f64(*timeout),
            };
            tail(&cli, topic, *from_end, matching.as_deref(), stop).await
        }
        Command::Topics {
            command:
                TopicsCommand::Apply {
                    dry_run,
                    replication_factor,
                    min_insync_replicas,
                },
        } => {
            let contracts = contracts(&cli)?;
            let admin = topics::Admin::connect(&cli.brokers)?;
            let mut declared = contracts.topics.with_prefix(&cli.topic_prefix);
            if let Some(factor) = replication_factor {
                declared = declared.with_replication(*factor, *min_insync_replicas);
            }
            let outcomes = topics::apply(&admin, &declared, *dry_run).await?;
            if outcomes.is_empty() {
                println!(
                    "topics: {} declared, all up to date",
                    contracts.topics.topics.len()
                );
            }
            let mut refused = 0;
            for outcome in &outcomes {
                let change = &outcome.change;
                match (&outcome.result, change) {
                    (_, topics::Change::Drift { .. }) => println!("{change}"),
                    (Ok(()), _) if *dry_run => println!("would apply: {change}"),
                    (Ok(()), _) => println!("applied: {change}"),
                    (Err(reason), _) => {
                        refused += 1;
                        println!("NOT applied: {change}: {reason}");
                    }
                }
            }
            if refused > 0 {
                bail!("{refused} change(s) refused by the broker; see above");
            }
            Ok(())
        }
        Command::Acls { command, plan } => acls(&cli, command, plan).await,
        Command::Schemas {
            command: SchemasCommand::Register,
        } => {
            let contracts = contracts(&cli)?;
            let registered =
                codec::register_all_prefixed(&cli.registry, &contracts, &cli.topic_prefix).await?;
            for registered in registered {
                println!(
                    "registered {} id {} version {}",
                    registered.subject,
                    registered.id,
                    registered.version.map_or("?".into(), |v| v.to_string())
                );
            }
            Ok(())
        }
        Command::Schemas {
            command: SchemasCommand::Check,
        } => {
            let contracts = contracts(&cli)?;
            for (topic, schema) in &contracts.schemas {
                println!("{topic}: ok ({})", schema.event_types().join(", "));
            }
            Ok(())
        }
        Command::Migrate => {
            let url = db::database_url();
            let pool = db::connect(&url).await?;
            db::migrate(&pool).await?;
            println!("database migrated ({})", db::redact(&url));
            // Servers that ask for passwords (compose): the processors' roles
            // get the one the processors are configured with.
            if let Ok(password) = std::env::var("PROCESSOR_DB_PASSWORD") {
                db::set_role_passwords(&pool, &password).await?;
                println!("passwords set for the processors' roles");
            }
            Ok(())
        }
        Command::Search {
            command: SearchCommand::Status { patient, json },
            matcher,
        } => {
            let surface = matcher.surface();
            let path = format!("/v1/searches/{}", search::path_segment(patient));
            let answer = surface.get(&path).await?;
            if *json {
                println!("{answer}");
            } else {
                print!("{}", search::render(&answer));
            }
            Ok(())
        }
        Command::Search {
            command:
                SearchCommand::Why {
                    patient,
                    therapist,
                    json,
                },
            matcher,
        } => {
            let path = format!(
                "/v1/searches/{}/why/{}",
                search::path_segment(patient),
                search::path_segment(therapist)
            );
            let answer = matcher.surface().get(&path).await?;
            if *json {
                println!("{answer}");
            } else {
                print!("{}", search::render_why(&answer));
            }
            Ok(())
        }
        Command::Contacts {
            patient,
            format,
            out,
            matcher,
            intake,
        } => contacts::write(patient, *format, out, matcher, intake).await,
        Command::Answer {
            patient,
            therapist,
            outcome,
            channel,
            matcher,
        } => {
            let path = format!("/v1/searches/{}", search::path_segment(patient));
            let state = matcher.surface().get(&path).await?;
            let inquiry = search::open_inquiry(&state, therapist)?;
            let channel = match channel {
                Channel::Email => "EMAIL",
                Channel::Phone => "PHONE",
            };
            let record = serde_json::json!({"event_type": "matching.record_answer", "payload": {
                "inquiry_id": inquiry, "therapist_id": therapist,
                "answers": [{"patient_id": patient, "outcome": outcome.symbol()}],
                "answered_at": chrono::Utc::now().to_rfc3339(), "channel": channel}});
            broker_answers(&cli).await?;
            publish_records(&cli, "matching-commands", vec![record]).await
        }
    }
}

fn read_input(file: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    }
    Ok(text)
}

/// One JSON object, an array of them, or a stream of them (JSON lines).
fn parse_records(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut records = Vec::new();
    for (index, value) in serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
    {
        match value.with_context(|| format!("input value {} is not valid JSON", index + 1))? {
            Value::Array(items) => records.extend(items),
            other => records.push(other),
        }
    }
    Ok(records)
}

async fn publish(cli: &Cli, topic: &str, file: &str) -> anyhow::Result<()> {
    let records = parse_records(&read_input(file)?)?;
    if records.is_empty() {
        bail!("no records in {file}");
    }
    publish_records(cli, topic, records).await
}

/// Publishes `records` (as people write them) to `topic`, all or none.
async fn publish_records(cli: &Cli, topic: &str, mut records: Vec<Value>) -> anyhow::Result<()> {
    let contracts = contracts(cli)?;
    let (spec, schema) = contracts.topic(topic)?;
    let physical = format!("{}{topic}", cli.topic_prefix);
    registry_answers(&cli.registry).await?;
    if topic == "patient-commands" {
        // Sealed, the details are out of the topic schema's sight: every
        // misfit is named now, before anything is sealed or published.
        let misfits: Vec<String> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| !r["payload"]["details"].is_null())
            .flat_map(|(index, record)| {
                schema
                    .misfits_named(
                        "psymatch.patient.PatientDetails",
                        &record["payload"]["details"],
                    )
                    .into_iter()
                    .map(move |misfit| format!("record {}: payload.details.{misfit}", index + 1))
            })
            .collect();
        if !misfits.is_empty() {
            bail!(
                "nothing published; the patients' details do not fit their schema:\n  {}",
                misfits.join("\n  ")
            );
        }
        // Crypto-shredding: a patient's details travel sealed with the
        // patient's key (DATABASE_URL, the owner's role), which erasure
        // destroys.
        let url = db::database_url();
        let pool = db::connect(&url).await.map_err(|error| {
            anyhow::anyhow!(
                "sealing a patient's details needs PostgreSQL, and {} does not answer ({error}): \
                 source .stack/env for the local stack, or set DATABASE_URL",
                db::redact(&url)
            )
        })?;
        let mut connection = pool.acquire().await?;
        for record in &mut records {
            psymatch_runtime::sealed::seal_command(&mut connection, record)
                .await
                .with_context(|| {
                    format!(
                        "sealing a patient's details (database {})",
                        db::redact(&url)
                    )
                })?;
        }
    }
    let codec = Codec::new(&cli.registry);
    let now = chrono::Utc::now();
    let mut encoded = Vec::new();
    let mut errors = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let prepared = async {
            let (key, envelope) =
                envelope::from_json(record, schema, &spec.key_fields, "cli", now)?;
            let bytes = codec.encode(&physical, envelope.to_avro(schema)?).await?;
            anyhow::Ok((key, envelope, bytes))
        };
        match prepared.await {
            Ok(done) => encoded.push(done),
            Err(error) => errors.push(format!("record {}: {error:#}", index + 1)),
        }
    }
    if !errors.is_empty() {
        bail!(
            "nothing published; {} of {} records do not fit:\n  {}",
            errors.len(),
            records.len(),
            errors.join("\n  ")
        );
    }
    let producer: FutureProducer =
        psymatch_runtime::broker::producer_config(&cli.brokers, "psymatch-cli").create()?;
    for (key, envelope, bytes) in encoded {
        let record = Outgoing::of_envelope(&physical, &key, &envelope, bytes);
        let delivery = producer
            .send(record.record(), Duration::from_secs(30))
            .await
            .map_err(|(error, _)| {
                anyhow::anyhow!(
                    "publishing: {}",
                    psymatch_runtime::broker::refusal(
                        &cli.brokers,
                        &physical,
                        &error,
                        psymatch_runtime::broker::NOT_ALLOWED
                    )
                )
            })?;
        println!(
            "published {topic} key={key} partition={} offset={} event_type={} event_id={}",
            delivery.partition, delivery.offset, envelope.event_type, envelope.event_id
        );
    }
    Ok(())
}

/// Fails with what to do when the schema registry at `url` does not
/// answer, before any record is encoded (the codec would report it as a
/// record that does not fit).
async fn registry_answers(url: &str) -> anyhow::Result<()> {
    let subjects = format!("{}/subjects", url.trim_end_matches('/'));
    let answer = psymatch_runtime::registry_client::settings(url)
        .http()
        .get(&subjects)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match answer {
        Ok(response) if matches!(response.status().as_u16(), 401 | 403) => bail!(
            "{}",
            psymatch_runtime::registry_client::explain(url, Some(response.status()), "")
        ),
        Ok(_) => Ok(()),
        Err(error) if format!("{error:?}").contains("certificate") => bail!(
            "{}",
            psymatch_runtime::registry_client::explain(url, None, &format!("{error:?}"))
        ),
        Err(error) => bail!(
            "the schema registry at {url} does not answer ({error}): source .stack/env for the \
             local stack, or set SCHEMA_REGISTRY_URL"
        ),
    }
}

/// When `tail` stops.
struct Stop<'a> {
    /// After this many printed records.
    max: Option<u64>,
    /// After this long without a record (once `until` has been seen).
    idle: Option<Duration>,
    /// Not before a printed record contains this text.
    until: Option<&'a str>,
    /// How long to wait for `until`.
    timeout: Duration,
}

async fn tail(
    cli: &Cli,
    topic: &str,
    from_end: bool,
    matching: Option<&str>,
    stop: Stop<'_>,
) -> anyhow::Result<()> {
    let contracts = contracts(cli)?;
    let has_schema = contracts.schemas.contains_key(topic);
    if contracts.topics.topic(topic).is_none() {
        let known: Vec<&str> = contracts
            .topics
            .topics
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        bail!(
            "unknown topic {topic}; topics.yaml declares {}",
            known.join(", ")
        );
    }
    let codec = Codec::new(&cli.registry);
    let topic = &format!("{}{topic}", cli.topic_prefix);
    // Assigned, not subscribed: tail reads every partition and commits nothing.
    let consumer: BaseConsumer = psymatch_runtime::broker::reader(&cli.brokers)
        .set("enable.auto.commit", "false")
        .create()?;
    let partitions = psymatch_runtime::broker::partitions_of(
        &consumer,
        &cli.brokers,
        topic,
        Duration::from_secs(10),
    )?;
    anyhow::ensure!(
        !partitions.is_empty(),
        "topic {topic} does not exist on the broker (psymatch topics apply creates it)"
    );
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let offset = if from_end {
            Offset::End
        } else {
            Offset::Beginning
        };
        assignment.add_partition_offset(topic, partition, offset)?;
    }
    consumer.assign(&assignment)?;
    let mut count = 0u64;
    let started = Instant::now();
    let mut last = started;
    // With --until, the idle timeout counts only once the awaited record
    // was printed: a record still on its way is waited for, not missed.
    let idle = stop.idle.or(stop.until.map(|_| Duration::from_secs(1)));
    let mut awaited = stop.until.is_none();
    while stop.max.is_none_or(|max| count < max) {
        if awaited && idle.is_some_and(|idle| last.elapsed() >= idle) {
            break;
        }
        if !awaited && started.elapsed() >= stop.timeout {
            bail!(
                "no record on {topic}{} contained {:?} within {} s",
                matching
                    .map(|m| format!(" matching {m:?}"))
                    .unwrap_or_default(),
                stop.until.unwrap_or_default(),
                stop.timeout.as_secs_f64()
            );
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match message {
            Err(error) if psymatch_runtime::broker::group_refused(&error) => continue,
            message => message?,
        };
        last = Instant::now();
        let headers: serde_json::Map<String, Value> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            json!(h.value.map(|v| String::from_utf8_lossy(v).into_owned())),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let value = match message.payload() {
            None => Value::Null,
            Some(bytes) if has_schema => match codec.decode(bytes).await {
                Ok(avro) => match envelope::Envelope::from_avro(avro) {
                    Ok(envelope) => envelope.to_json(),
                    Err(error) => json!({"error": error.to_string()}),
                },
                Err(error) => json!({"error": error.to_string()}),
            },
            Some(bytes) => json!({"raw": String::from_utf8_lossy(bytes)}),
        };
        let line = json!({
            "partition": message.partition(),
            "offset": message.offset(),
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "headers": headers,
            "value": value,
        })
        .to_string();
        if matching.is_some_and(|text| !line.contains(text)) {
            continue;
        }
        count += 1;
        if stop.until.is_some_and(|text| line.contains(text)) {
            awaited = true;
        }
        // A reader that has seen enough (`| head`, `| grep -q`) closes
        // the pipe: that ends the tail, not a panic.
        use std::io::Write;
        if let Err(error) = writeln!(std::io::stdout().lock(), "{line}") {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(error.into());
        }
    }
    Ok(())
}
