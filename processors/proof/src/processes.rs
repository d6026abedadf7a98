//! The processors as real processes, started from the binaries beside this
//! one, each with its own role, health port and log file.

use anyhow::{Context, bail};
use psymatch_runtime::testing::{KillOnDrop, TestBed, free_port};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every topic a processor consumes, with its consumers (their schemas),
/// in topics.yaml's order: its `clients` (the example left out), which
/// every processor's `inputs()` must equal.
pub fn consumed() -> &'static [(&'static str, Vec<&'static str>)] {
    static CONSUMED: std::sync::OnceLock<Vec<(&'static str, Vec<&'static str>)>> =
        std::sync::OnceLock::new();
    CONSUMED.get_or_init(|| {
        let file = &psymatch_runtime::contracts::Contracts::embedded().topics;
        file.topics
            .iter()
            .filter_map(|topic| {
                let readers: Vec<&'static str> = file
                    .clients
                    .iter()
                    .filter(|(_, c)| !c.tool && c.acls && c.reads.contains(&topic.name))
                    .map(|(name, _)| name.as_str())
                    .collect();
                (!readers.is_empty()).then_some((topic.name.as_str(), readers))
            })
            .collect()
    })
}

/// A running processor process.
pub struct Process {
    /// Its schema name (`email_batcher`).
    pub name: String,
    /// Its log file.
    pub log: PathBuf,
    /// The port of its surface (health, metrics, queries).
    pub port: u16,
    child: KillOnDrop,
}

/// The directory of the workspace's binaries: this one's, or for a test
/// (in `deps/`) the one above.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this binary")?;
    let dir = me.parent().context("this binary has a directory")?;
    Ok(if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The path of a workspace binary beside this one (`psymatch`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    Ok(bin_dir()?.join(name))
}

/// Runs the `psymatch` tool against `bed` (its brokers, registry, topic
/// prefix and Kafka settings), `env` on top (`None` removes a variable).
pub fn tool(bed: &TestBed, env: &[(&str, Option<String>)], args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(binary("psymatch").expect("binary directory"));
    command
        .args(args)
        .env("KAFKA_BROKERS", &bed.brokers)
        .env("SCHEMA_REGISTRY_URL", &bed.registry_url)
        .env("TOPIC_PREFIX", &bed.prefix)
        .envs(bed.kafka_env.iter().cloned());
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command.output().expect("psymatch (cargo build --bins)")
}

/// Asserts that the tool refused: it failed and said `expected` on
/// standard error, in one line; that line.
pub fn refused_in_one_line(output: &std::process::Output, expected: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "not refused: {stderr}");
    assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

/// Starts the workspace binary `binary` with `env` and a free surface port
/// (`HTTP_LISTEN`), its log in `dir/<binary>.log`: the process, the port
/// and the log's path. Nothing is waited for.
pub fn spawn(
    binary: &str,
    mut env: Vec<(String, String)>,
    dir: &Path,
) -> (KillOnDrop, u16, PathBuf) {
    let port = free_port();
    env.push(("HTTP_LISTEN".into(), format!("127.0.0.1:{port}")));
    let log = dir.join(format!("{binary}.log"));
    let path = self::binary(binary).expect("binary directory");
    let child = KillOnDrop::spawn(path.to_str().expect("a UTF-8 path"), &env, &log);
    (child, port, log)
}

/// Starts `binary` as processor `name` (its schema) in `bed`, with `extra`
/// settings, and waits until its health endpoint answers.
pub async fn start(
    bed: &TestBed,
    name: &str,
    binary: &str,
    extra: &[(&str, String)],
    logs: &Path,
) -> anyhow::Result<Process> {
    let port = free_port();
    // On the secured cluster each processor is its own principal, held to
    // the ACLs topics.yaml gives it.
    let mut env = if bed.is_secured() {
        bed.env_as_own_principal(name)
    } else {
        bed.env(name)
    };
    env.push(("HTTP_LISTEN".into(), format!("127.0.0.1:{port}")));
    env.push(("RUST_LOG".into(), "warn".into()));
    // Later settings win (RUST_LOG=debug for the log scan).
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let log = logs.join(format!("{name}.log"));
    let path = bin_dir()?.join(binary);
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace first (cargo build --workspace)",
            path.display()
        );
    }
    let child = KillOnDrop::spawn(&path.to_string_lossy(), &env, &log);
    let mut process = Process {
        name: name.to_string(),
        log,
        port,
        child,
    };
    let url = format!("http://127.0.0.1:{port}/health/liveness");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(process);
        }
        if let Some(status) = process.exited() {
            bail!(
                "{name} exited at start ({status}); see {}",
                process.log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not answer on {url}; see {}",
                process.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a helper binary that is not a processor (a stand-in server).
pub fn helper(binary: &str, args: &[&str], logs: &Path) -> anyhow::Result<KillOnDrop> {
    let path = bin_dir()?.join(binary);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{binary}-helper.log")))?;
    let child = std::process::Command::new(&path)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    Ok(KillOnDrop(child))
}

impl Process {
    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.0.try_wait().ok().flatten()
    }

    /// Its peak resident memory in MiB and the CPU seconds it used so far
    /// (`/proc`), while it runs: what a Deployment's requests and limits
    /// are set from.
    pub fn usage(&self) -> Option<(f64, f64)> {
        let pid = self.child.0.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let peak_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command's closing parenthesis: state is field 3, utime
        // and stime fields 14 and 15, in clock ticks (100 a second on Linux).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((peak_kib / 1024.0, ticks / 100.0))
    }

    /// Stops it with SIGTERM, as Kubernetes scales down: it finishes the
    /// batch in hand, publishes what it committed and exits; its exit
    /// status, or `None` when it still ran after `within` (then it is
    /// killed, as Kubernetes would at the end of the grace period).
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let exited = self.child.stop_within(within).await;
        if exited.is_none() {
            self.kill();
        }
        exited
    }

    /// Kills it with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Log lines that tell of a panic.
    pub fn panics(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|text| text.lines().filter(|l| l.contains("panicked")).count())
            .unwrap_or(0)
    }
}

/// A process's settings beyond the test bed's.
pub type Settings = Vec<(&'static str, String)>;

/// The chain of the data-protection proofs: intake, the geocoder offline,
/// the matcher, and the email batcher writing its mails as files into
/// `mail`.
pub fn chain(mail: &Path) -> Vec<(&'static str, &'static str, Settings)> {
    vec![
        ("intake", "psymatch-intake", vec![]),
        (
            "geocoder",
            "psymatch-geocoder",
            vec![
                ("NOMINATIM_URL", "offline".into()),
                ("OSRM_URL", "offline".into()),
                ("GEOCODER_CONTACT", "proof@example.invalid".into()),
            ],
        ),
        ("matcher", "psymatch-matcher", vec![]),
        (
            "email_batcher",
            "psymatch-email-batcher",
            vec![
                ("EMAIL_TRANSPORT", "file".into()),
                ("EMAIL_FILE_DIR", mail.to_string_lossy().into_owned()),
            ],
        ),
    ]
}

/// Starts the stand-in doctor search (`psymatch-scraper fake`, 120
/// synthetic practices around Berlin-Mitte) on a free port; returns it
/// (it stops when dropped) and the scraper's settings for asking it.
pub fn fake_kbv(
    logs: &Path,
) -> anyhow::Result<(KillOnDrop, (&'static str, &'static str, Settings))> {
    let port = free_port();
    let credential = "ZGVtbzpkZW1v";
    let fake = helper(
        "psymatch-scraper",
        &[
            "fake",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--credential",
            credential,
        ],
        logs,
    )?;
    let scraper = (
        "scraper",
        "psymatch-scraper",
        vec![
            ("KBV_URL", format!("http://127.0.0.1:{port}")),
            ("KBV_BASIC_AUTH", credential.into()),
            ("KBV_RATE_PER_SECOND", "50".into()),
            ("SCRAPE_MIN_RADIUS_KM", "1".into()),
            ("SCRAPER_CONTACT", "proof@example.invalid".into()),
        ],
    );
    Ok((fake, scraper))
}

/// The scheduler with the schedule `file`, on a short lease and quick
/// retries so that a killed replica's runs are taken over within seconds.
pub fn scheduler(file: &Path) -> (&'static str, &'static str, Settings) {
    (
        "scheduler",
        "psymatch-scheduler",
        vec![
            ("SCHEDULE_FILE", file.to_string_lossy().into_owned()),
            ("SCHEDULER_TICK_MS", "250".into()),
            ("SCHEDULER_LEASE_SECS", "5".into()),
            ("SCHEDULER_RETRY_BASE_MS", "500".into()),
        ],
    )
}

/// Starts every process of `settings`, each with `common` settings too.
pub async fn start_all(
    bed: &TestBed,
    settings: Vec<(&'static str, &'static str, Settings)>,
    common: &[(&'static str, String)],
    logs: &Path,
) -> anyhow::Result<Vec<Process>> {
    let mut running = Vec::new();
    for (name, binary, mut extra) in settings {
        extra.extend(common.iter().cloned());
        running.push(start(bed, name, binary, &extra, logs).await?);
    }
    Ok(running)
}

/// Sends the inquiries the matcher wrote: waits until the email batcher
/// holds one (a flush on another partition could overtake it), asks for a
/// flush, and waits until an email was sent.
pub async fn email_inquiries(bed: &TestBed, run_id: &str) {
    bed.wait_for(
        "an inquiry waits in the batcher",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM email_batcher.inquiries")
                .fetch_one(&bed.pool)
                .await
                .is_ok_and(|n| n > 0)
        },
    )
    .await;
    bed.publish(
        "email-commands",
        &[serde_json::json!({"event_type": "email.flush_batches", "payload": {"run_id": run_id}})],
    )
    .await;
    bed.read_until("communication-events", Duration::from_secs(60), |r| {
        !psymatch_runtime::testing::of_type(r, "email.sent").is_empty()
    })
    .await;
}

/// How many partitions `topic` has.
pub fn partitions<C, T>(consumer: &T, topic: &str) -> anyhow::Result<i32>
where
    C: rdkafka::consumer::ConsumerContext,
    T: rdkafka::consumer::Consumer<C>,
{
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()) as i32)
}

/// What is still to do, if anything: a processor's outbox not yet
/// published, or a consumer behind the end of a partition it consumes.
pub async fn backlog(bed: &TestBed) -> anyhow::Result<Option<String>> {
    let mut schemas: Vec<&str> = consumed()
        .iter()
        .flat_map(|(_, r)| r.iter().copied())
        .collect();
    schemas.sort();
    schemas.dedup();
    for schema in schemas {
        let waiting: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.outbox"))
            .fetch_one(&bed.pool)
            .await?;
        if waiting > 0 {
            return Ok(Some(format!("{waiting} records in the outbox of {schema}")));
        }
    }
    let consumer: rdkafka::consumer::BaseConsumer = psymatch_runtime::broker::client(&bed.brokers)
        .set("group.id", format!("backlog-{}", uuid::Uuid::new_v4()))
        .create()?;
    for (topic, readers) in consumed() {
        let physical = format!("{}{topic}", bed.prefix);
        for partition in 0..partitions(&consumer, &physical)? {
            let (_, high) = rdkafka::consumer::Consumer::fetch_watermarks(
                &consumer,
                &physical,
                partition,
                Duration::from_secs(10),
            )?;
            for reader in readers {
                let next: Option<i64> = sqlx::query_scalar(&format!(
                    "SELECT max(next_offset) FROM {reader}.consumer_offsets WHERE topic = $1 AND partition = $2"
                ))
                .bind(&physical)
                .bind(partition)
                .fetch_one(&bed.pool)
                .await?;
                if next.unwrap_or(0) < high {
                    return Ok(Some(format!("{reader} behind on {topic}/{partition}")));
                }
            }
        }
    }
    Ok(None)
}
