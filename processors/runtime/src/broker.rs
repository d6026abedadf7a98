//! The Kafka broker as every psymatch binary talks to it: whether it
//! answers (one check with one message, shared by the processors, which
//! wait for it at start, and the `psymatch` tool, which says so in one line
//! and stops), and how a producer is configured.

use crate::config::Vars;
use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

/// How this process reaches Kafka beyond the bootstrap servers: the named
/// security settings (TLS, SASL; secrets read from files) and the raw
/// `KAFKA_OPTION_*` librdkafka options, in the order they apply.
///
/// | variable | meaning |
/// |---|---|
/// | `KAFKA_SECURITY_PROTOCOL` | `plaintext` (default), `ssl`, `sasl_ssl` or `sasl_plaintext` |
/// | `KAFKA_SASL_MECHANISM` | `SCRAM-SHA-512` (default with SASL), `SCRAM-SHA-256` or `PLAIN` |
/// | `KAFKA_SASL_USERNAME` | the principal's name |
/// | `KAFKA_SASL_PASSWORD_FILE` | a file holding its password (a Secret mount) |
/// | `KAFKA_SSL_CA_FILE` | PEM file of the CA that signed the brokers' certificates (default: the system's) |
/// | `KAFKA_SSL_CERTIFICATE_FILE`, `KAFKA_SSL_KEY_FILE` | this client's certificate and key: mutual TLS (instead of or beside SASL) |
/// | `KAFKA_SSL_KEY_PASSWORD_FILE` | a file holding the key's password, if it has one |
/// | `KAFKA_OPTION_<NAME>` | any librdkafka option, applied last: `KAFKA_OPTION_SESSION_TIMEOUT_MS=6000` |
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// librdkafka properties, applied in order.
    options: Vec<(String, String)>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .options
            .iter()
            .map(|(k, v)| {
                // sasl.password, ssl.key.password, ...client.secret
                let secret = k.contains("password") || k.contains("secret");
                (k.as_str(), if secret { "<secret>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("Settings").field("options", &shown).finish()
    }
}

impl Settings {
    /// Reads the settings from `vars` (files named there are read now: a
    /// missing one stops the start with the setting's name).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> anyhow::Result<Settings> {
        let v = Vars(vars);
        let protocol = v.choice(
            "KAFKA_SECURITY_PROTOCOL",
            &[
                ("plaintext", "plaintext"),
                ("ssl", "ssl"),
                ("sasl_ssl", "sasl_ssl"),
                ("sasl_plaintext", "sasl_plaintext"),
            ],
        )?;
        let mechanism = v.choice(
            "KAFKA_SASL_MECHANISM",
            &[
                ("SCRAM-SHA-512", "SCRAM-SHA-512"),
                ("SCRAM-SHA-256", "SCRAM-SHA-256"),
                ("PLAIN", "PLAIN"),
                ("OAUTHBEARER", "OAUTHBEARER"),
            ],
        )?;
        let username = v.text("KAFKA_SASL_USERNAME", "");
        let password_file = v.text("KAFKA_SASL_PASSWORD_FILE", "");
        // OAUTHBEARER with OIDC client credentials: librdkafka asks the
        // token endpoint itself and renews the token before it expires.
        let token_endpoint = v.text("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", "");
        let client_id = v.text("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", "");
        let client_secret_file = v.text("KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE", "");
        let scope = v.text("KAFKA_SASL_OAUTHBEARER_SCOPE", "");
        let ca = v.text("KAFKA_SSL_CA_FILE", "");
        let certificate = v.text("KAFKA_SSL_CERTIFICATE_FILE", "");
        let key = v.text("KAFKA_SSL_KEY_FILE", "");
        let key_password_file = v.text("KAFKA_SSL_KEY_PASSWORD_FILE", "");
        let mut settings = Settings::default();
        let mut set = |k: &str, v: String| settings.options.push((k.to_string(), v));
        set("security.protocol", protocol.to_string());
        let sasl = protocol.starts_with("sasl");
        let tls = protocol.ends_with("ssl");
        let oauth = [&token_endpoint, &client_id, &client_secret_file, &scope];
        if sasl && mechanism == "OAUTHBEARER" {
            if token_endpoint.is_empty() || client_id.is_empty() || client_secret_file.is_empty() {
                bail!(
                    "KAFKA_SASL_MECHANISM=OAUTHBEARER needs KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL, KAFKA_SASL_OAUTHBEARER_CLIENT_ID and KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE"
                );
            }
            if !username.is_empty() || !password_file.is_empty() {
                bail!(
                    "KAFKA_SASL_MECHANISM=OAUTHBEARER takes a client id and secret, not KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE"
                );
            }
            set("sasl.mechanisms", mechanism.to_string());
            set("sasl.oauthbearer.method", "oidc".to_string());
            set(
                "sasl.oauthbearer.token.endpoint.url",
                token_endpoint.clone(),
            );
            set("sasl.oauthbearer.client.id", client_id.clone());
            set(
                "sasl.oauthbearer.client.secret",
                secret_file(
                    "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE",
                    &client_secret_file,
                )?,
            );
            if !scope.is_empty() {
                set("sasl.oauthbearer.scope", scope.clone());
            }
        } else if sasl {
            if oauth.iter().any(|v| !v.is_empty()) {
                bail!(
                    "KAFKA_SASL_OAUTHBEARER_* needs KAFKA_SASL_MECHANISM=OAUTHBEARER (it is {mechanism})"
                );
            }
            if username.is_empty() || password_file.is_empty() {
                bail!(
                    "KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE"
                );
            }
            set("sasl.mechanisms", mechanism.to_string());
            set("sasl.username", username.clone());
            set(
                "sasl.password",
                secret_file("KAFKA_SASL_PASSWORD_FILE", &password_file)?,
            );
        } else if oauth.iter().any(|v| !v.is_empty()) {
            bail!(
                "KAFKA_SASL_OAUTHBEARER_* needs KAFKA_SECURITY_PROTOCOL=sasl_ssl (or sasl_plaintext) and KAFKA_SASL_MECHANISM=OAUTHBEARER"
            );
        } else if !username.is_empty() || !password_file.is_empty() {
            bail!(
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE need KAFKA_SECURITY_PROTOCOL=sasl_ssl (or sasl_plaintext)"
            );
        }
        let files = [
            ("KAFKA_SSL_CA_FILE", &ca, "ssl.ca.location"),
            (
                "KAFKA_SSL_CERTIFICATE_FILE",
                &certificate,
                "ssl.certificate.location",
            ),
            ("KAFKA_SSL_KEY_FILE", &key, "ssl.key.location"),
        ];
        for (name, path, option) in files {
            if path.is_empty() {
                continue;
            }
            if !tls {
                bail!("{name} needs KAFKA_SECURITY_PROTOCOL=ssl or sasl_ssl (it is {protocol})");
            }
            readable(name, path)?;
            set(option, path.clone());
        }
        if certificate.is_empty() != key.is_empty() {
            bail!("mutual TLS needs both KAFKA_SSL_CERTIFICATE_FILE and KAFKA_SSL_KEY_FILE");
        }
        if !key_password_file.is_empty() {
            set(
                "ssl.key.password",
                secret_file("KAFKA_SSL_KEY_PASSWORD_FILE", &key_password_file)?,
            );
        }
        // Raw options last: they override the named settings.
        for (name, value) in vars {
            if let Some(option) = name.strip_prefix("KAFKA_OPTION_") {
                set(
                    &option.to_ascii_lowercase().replace('_', "."),
                    value.clone(),
                );
            }
        }
        Ok(settings)
    }

    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Settings> {
        Settings::from_vars(&std::env::vars().collect())
    }

    /// Applies them to `config` (after what the caller set: they win).
    pub fn apply(&self, config: &mut ClientConfig) {
        for (key, value) in &self.options {
            config.set(key, value);
        }
    }

    /// Who the brokers will take this client for, for messages: the
    /// principal's name, the certificate that names it (mutual TLS: the
    /// brokers map its subject), or ANONYMOUS.
    pub fn who(&self) -> String {
        match (self.principal(), self.option("ssl.certificate.location")) {
            (Some(name), _) => name.to_string(),
            (None, Some(certificate)) => format!("of the certificate {certificate}"),
            (None, None) => "ANONYMOUS".to_string(),
        }
    }

    /// The SASL principal, when there is one.
    pub fn principal(&self) -> Option<&str> {
        // OAUTHBEARER: the client id, which the token carries as its
        // subject (the principal, as brokers map it by default).
        self.option("sasl.username")
            .or_else(|| self.option("sasl.oauthbearer.client.id"))
    }

    /// The value of a librdkafka property as these settings give it.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The first line of a secret file, without its line end (files made with
/// `echo` end in one); an unreadable or empty file names the setting, never
/// the content.
pub(crate) fn secret_file(name: &str, path: &str) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{name}={path} cannot be read"))?;
    let secret = text.lines().next().unwrap_or_default().to_string();
    if secret.is_empty() {
        bail!("{name}={path} is empty");
    }
    Ok(secret)
}

/// A file librdkafka will read: checked now, so that a wrong path stops
/// the start with the setting's name rather than a TLS error later.
fn readable(name: &str, path: &str) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .with_context(|| format!("{name}={path} cannot be read"))
}

/// The settings of this process's clients, by bootstrap servers ([`client`]).
static PROCESS: RwLock<BTreeMap<String, Settings>> = RwLock::new(BTreeMap::new());

/// Makes `settings` those of every client this process makes for `brokers`
/// from now on (a processor's at its start, the command line's from its
/// environment). Kept per cluster, so that tests that talk to a plaintext
/// and a secured cluster at once each get theirs.
pub fn use_settings(brokers: &str, settings: Settings) {
    PROCESS
        .write()
        .expect("settings lock")
        .insert(brokers.to_string(), settings);
}

/// The settings clients for `brokers` get (plaintext unless told).
pub fn settings(brokers: &str) -> Settings {
    PROCESS
        .read()
        .expect("settings lock")
        .get(brokers)
        .cloned()
        .unwrap_or_default()
}

/// A client configuration for `brokers` with this process's security
/// settings and raw options for them: every Kafka client of psymatch
/// starts here, so none connects in plaintext where TLS was asked for.
pub fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    settings(brokers).apply(&mut config);
    config
}

/// The broker did not answer a metadata request.
#[derive(Debug, thiserror::Error)]
#[error("the Kafka broker at {brokers} is unreachable (KAFKA_BROKERS): {reason}")]
pub struct Unreachable {
    /// The bootstrap servers asked.
    pub brokers: String,
    /// librdkafka's reason, on one line.
    pub reason: String,
}

/// The settings of every psymatch producer: idempotent, so that its own
/// retries (a broker restart, a lost acknowledgement) neither duplicate
/// nor reorder a partition's records; a short linger for batching; a
/// delivery bound after which a send fails and is retried by the caller.
pub fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000");
    // Last, as in `client`: the process's settings override these defaults.
    settings(brokers).apply(&mut config);
    config
}

/// Asks `brokers` for their metadata within `timeout`. Blocks: call it off
/// the async workers. A refusal says what was refused and what to do (a
/// TLS handshake, a SASL login), from the client's own error report.
pub fn check(brokers: &str, timeout: Duration) -> Result<(), Unreachable> {
    let unreachable = |reason: String| Unreachable {
        brokers: brokers.to_string(),
        reason,
    };
    let context = LastError::default();
    let client: BaseConsumer<LastError> = client(brokers)
        // A refused connection is the answer: no log line per retry.
        .set("log_level", "0")
        .create_with_context(context)
        .map_err(|e| unreachable(e.to_string()))?;
    let reported = || {
        // Errors reach the context when the client is polled: a TLS or
        // SASL failure is waiting there once the request has failed.
        let _ = client.poll(Duration::from_millis(100));
        let last = client.context().0.lock().expect("error lock").clone();
        last.map(|reason: String| explain(brokers, &reason))
    };
    match client.fetch_metadata(None, timeout) {
        Ok(metadata) if !metadata.brokers().is_empty() => Ok(()),
        Ok(_) => Err(unreachable("no broker in the cluster's metadata".into())),
        Err(error) => Err(unreachable(
            reported().unwrap_or_else(|| one_line(&error.to_string())),
        )),
    }
}

/// The last error librdkafka reported for a client (its error callback):
/// a failed TLS handshake or SASL login is told there, not in the result
/// of the request that needed the connection.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<String>>);

impl rdkafka::ClientContext for LastError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let mut last = self.0.lock().expect("error lock");
        // "All brokers are down" follows the error that says why: keep that.
        let summary = matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
        );
        if !summary || last.is_none() {
            *last = Some(format!("{error}: {reason}"));
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// A connection error with what to do about it, on one line.
fn explain(brokers: &str, reason: &str) -> String {
    let reason = one_line(reason);
    let lower = reason.to_ascii_lowercase();
    let settings = settings(brokers);
    let principal = settings.who();
    if lower.contains("oauthbearer token") {
        format!(
            "no OAUTHBEARER token for principal {principal}: the token endpoint refused or did not answer; check KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL, KAFKA_SASL_OAUTHBEARER_CLIENT_ID and KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE ({reason})"
        )
    } else if lower.contains("sasl authentication") || lower.contains("authentication failed") {
        format!(
            "SASL authentication failed for principal {principal}: check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD_FILE and KAFKA_SASL_MECHANISM ({reason})"
        )
    } else if lower.contains("certificate has expired")
        || lower.contains("not yet valid")
        || (lower.contains("certificate verify failed")
            && certificate_out_of_date(brokers, &settings))
    {
        format!(
            "the brokers' TLS certificate has expired or is not yet valid: the brokers need a current certificate (check the clocks too) ({reason})"
        )
    } else if lower.contains("certificate verify failed")
        || lower.contains("unable to get local issuer")
    {
        format!(
            "the brokers' TLS certificate is not trusted: set KAFKA_SSL_CA_FILE to the CA that signed it ({reason})"
        )
    } else if lower.contains("ssl handshake failed") || lower.contains("wrong version number") {
        format!(
            "the TLS handshake failed: does the listener speak KAFKA_SECURITY_PROTOCOL={}? ({reason})",
            settings.option("security.protocol").unwrap_or("plaintext")
        )
    } else if (lower.contains("disconnected") || lower.contains("allbrokersdown"))
        && settings
            .option("security.protocol")
            .is_none_or(|p| p == "plaintext")
    {
        // Nothing refused the connection: the brokers closed it, as a TLS
        // or SASL listener does to a plaintext client.
        format!(
            "{reason} (the brokers closed the connection: if their listeners speak TLS or SASL, set KAFKA_SECURITY_PROTOCOL)"
        )
    } else {
        reason
    }
}

/// Whether the first broker's TLS certificate is outside its validity
/// (librdkafka says only "certificate verify failed" for an expired one as
/// for an unknown CA): asked with a TLS handshake of our own (rustls,
/// through reqwest), trusting the same CA.
fn certificate_out_of_date(brokers: &str, settings: &Settings) -> bool {
    let Some(address) = brokers.split(',').next().map(str::trim) else {
        return false;
    };
    let url = format!("https://{address}/");
    let ca = settings
        .option("ssl.ca.location")
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok());
    // A runtime of its own on a thread of its own: callers may be on one.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async move {
            let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(3));
            if let Some(ca) = ca {
                builder = builder.add_root_certificate(ca);
            }
            let error = builder.build().ok()?.get(&url).send().await.err()?;
            // The handshake's verdict is deep in the error's sources.
            let text = format!("{error:?}");
            Some(text.contains("Expired") || text.contains("NotValidYet"))
        })
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Reads how far a topic's partitions reach (their watermarks): what a
/// consumer must have read to have seen everything published before.
pub struct Watermarks {
    client: std::sync::Arc<BaseConsumer>,
}

impl Watermarks {
    /// A client for `brokers` (no group: it only reads metadata).
    pub fn connect(brokers: &str) -> anyhow::Result<Watermarks> {
        let client: BaseConsumer = client(brokers)
            .set("client.id", "psymatch-watermarks")
            .create()?;
        Ok(Watermarks {
            client: std::sync::Arc::new(client),
        })
    }

    /// Every partition of `topic` with its low and high watermark now.
    pub async fn of(&self, topic: &str, timeout: Duration) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let client = self.client.clone();
        let topic = topic.to_string();
        // librdkafka's calls block: off the async workers.
        tokio::task::spawn_blocking(move || {
            let metadata = client.fetch_metadata(Some(&topic), timeout)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
            partitions
                .into_iter()
                .map(|p| {
                    let (low, high) = client.fetch_watermarks(&topic, p, timeout)?;
                    Ok((p, low, high))
                })
                .collect()
        })
        .await?
    }
}

/// `error` from using `topic`, in one line: an authorization refusal
/// names the topic, the principal and `advice`; anything else is the
/// error as librdkafka says it.
pub fn refusal(
    brokers: &str,
    topic: &str,
    error: &rdkafka::error::KafkaError,
    advice: &str,
) -> String {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let code = match error.rdkafka_error_code() {
        Some(Code::TopicAuthorizationFailed) => "TOPIC_AUTHORIZATION_FAILED",
        Some(Code::ClusterAuthorizationFailed) => "CLUSTER_AUTHORIZATION_FAILED",
        Some(Code::TransactionalIdAuthorizationFailed) => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        Some(Code::GroupAuthorizationFailed) => "GROUP_AUTHORIZATION_FAILED",
        _ => return format!("topic {topic}: {error}"),
    };
    let settings = settings(brokers);
    format!(
        "topic {topic}: {code} for principal {}: {advice}",
        settings.who()
    )
}

/// A client for a consumer that is assigned partitions and commits
/// nothing (tail, reading topics). librdkafka assigns only with a group id;
/// a throwaway one is set, and the principal needs no ACL for it: the
/// group's refusal ([`group_refused`]) is not an error for such a reader.
pub fn reader(brokers: &str) -> ClientConfig {
    let mut config = client(brokers);
    config.set(
        "group.id",
        format!("psymatch-read-{}", uuid::Uuid::new_v4()),
    );
    config
}

/// Whether `error` is the broker refusing a consumer group to a principal
/// without its ACL: harmless for a [`reader`], which never joins it.
pub fn group_refused(error: &rdkafka::error::KafkaError) -> bool {
    error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed)
}

/// What a person is told when a tool's principal is refused a topic.
pub const NOT_ALLOWED: &str =
    "it may not use this topic so (psymatch acls plan lists what each principal may do)";

/// The partitions of `topic` as the broker shows them to this client's
/// principal; a topic it may not see is refused in one line naming the
/// principal (an empty list: the topic does not exist).
pub fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata.topics().first() else {
        return Ok(Vec::new());
    };
    if found.error()
        == Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
    {
        let settings = settings(brokers);
        anyhow::bail!(
            "topic {topic}: TOPIC_AUTHORIZATION_FAILED for principal {}: {NOT_ALLOWED}",
            settings.who()
        );
    }
    Ok(found.partitions().iter().map(|p| p.id()).collect())
}

/// Reads every record of the logical `topics` (with `prefix`) from the
/// beginning up to their end as the read starts, every partition at once,
/// and hands each to `each` with its logical topic name; returns how many
/// there were. No group joins and nothing is committed: reading leaves no
/// trace on the broker.
pub fn read_topics(
    brokers: &str,
    prefix: &str,
    topics: &[&str],
    mut each: impl FnMut(&str, &rdkafka::message::BorrowedMessage<'_>),
) -> anyhow::Result<usize> {
    use rdkafka::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = reader(brokers)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: std::collections::BTreeMap<(String, i32), i64> = Default::default();
    let timeout = Duration::from_secs(10);
    for topic in topics {
        let physical = format!("{prefix}{topic}");
        let partitions = partitions_of(&consumer, brokers, &physical, timeout)?;
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(&physical, partition, timeout)?;
            if high > low {
                assignment.add_partition_offset(&physical, partition, Offset::Offset(low))?;
                ends.insert((physical.clone(), partition), high);
            }
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&assignment)?;
    let mut records = 0usize;
    let mut quiet_since = std::time::Instant::now();
    while !ends.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            // A partition may end in a transaction marker, which is never
            // delivered: its position shows that it has been read.
            for tp in consumer.position()?.elements() {
                let at = (tp.topic().to_string(), tp.partition());
                if let (Offset::Offset(position), Some(end)) = (tp.offset(), ends.get(&at))
                    && position >= *end
                {
                    ends.remove(&at);
                }
            }
            anyhow::ensure!(
                quiet_since.elapsed() < timeout,
                "no record within 10 s; still to read: {ends:?}"
            );
            continue;
        };
        quiet_since = std::time::Instant::now();
        let message = match message {
            Err(error) if group_refused(&error) => continue,
            message => message?,
        };
        let at = (message.topic().to_string(), message.partition());
        if ends
            .get(&at)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&at);
        }
        records += 1;
        each(message.topic().trim_start_matches(prefix), &message);
    }
    Ok(records)
}

/// librdkafka repeats its error code in the message
/// (`X (Local: Y): X (Local: Y)`): once is enough.
fn one_line(text: &str) -> String {
    let text = text.replace('\n', " ");
    match text.split_once(": ") {
        Some((head, tail)) if tail.starts_with(head.split(' ').next().unwrap_or(head)) => {
            tail.to_string()
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::Settings;
    use std::collections::BTreeMap;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sasl_ssl_with_scram_reads_the_password_from_its_file_and_never_shows_it() {
        let dir = crate::testing::scratch_dir("kafka-settings");
        let (password, ca) = (dir.join("password"), dir.join("ca.pem"));
        std::fs::write(&password, "synthetic-password-0123\n").unwrap();
        std::fs::write(&ca, "a CA file librdkafka reads when it connects").unwrap();
        let settings = Settings::from_vars(&vars(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_USERNAME", "matcher"),
            ("KAFKA_SASL_PASSWORD_FILE", password.to_str().unwrap()),
            ("KAFKA_SSL_CA_FILE", ca.to_str().unwrap()),
            ("KAFKA_OPTION_SESSION_TIMEOUT_MS", "6000"),
        ]))
        .unwrap();
        assert_eq!(settings.option("security.protocol"), Some("sasl_ssl"));
        assert_eq!(settings.option("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(
            settings.option("sasl.password"),
            Some("synthetic-password-0123")
        );
        assert_eq!(settings.option("ssl.ca.location"), ca.to_str());
        assert_eq!(settings.option("session.timeout.ms"), Some("6000"));
        assert_eq!(settings.principal(), Some("matcher"));
        let shown = format!("{settings:?}");
        assert!(!shown.contains("synthetic-password"), "{shown}");
        assert!(shown.contains("<secret>"), "{shown}");
    }

    #[test]
    fn oauthbearer_takes_oidc_client_credentials_with_the_secret_from_a_file() {
        let dir = crate::testing::scratch_dir("kafka-oauth");
        let secret = dir.join("secret");
        std::fs::write(&secret, "synthetic-client-secret\n").unwrap();
        let settings = Settings::from_vars(&vars(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "OAUTHBEARER"),
            (
                "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
                "https://id.example.org/token",
            ),
            ("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", "matcher"),
            (
                "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE",
                secret.to_str().unwrap(),
            ),
            ("KAFKA_SASL_OAUTHBEARER_SCOPE", "kafka"),
        ]))
        .unwrap();
        assert_eq!(settings.option("sasl.oauthbearer.method"), Some("oidc"));
        assert_eq!(
            settings.option("sasl.oauthbearer.client.secret"),
            Some("synthetic-client-secret")
        );
        assert_eq!(settings.option("sasl.oauthbearer.scope"), Some("kafka"));
        assert_eq!(settings.principal(), Some("matcher"));
        let shown = format!("{settings:?}");
        assert!(!shown.contains("synthetic-client-secret"), "{shown}");
        // librdkafka of this build can fetch tokens (it has libcurl).
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        settings.apply(&mut config);
        let created: Result<rdkafka::consumer::BaseConsumer, _> = config.create();
        assert!(created.is_ok(), "{:?}", created.err());
        let error =
            |pairs: &[(&str, &str)]| Settings::from_vars(&vars(pairs)).unwrap_err().to_string();
        assert!(
            error(&[
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("KAFKA_SASL_MECHANISM", "OAUTHBEARER"),
            ])
            .contains("needs KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL")
        );
        assert!(
            error(&[("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", "matcher")])
                .contains("needs KAFKA_SECURITY_PROTOCOL=sasl_ssl")
        );
    }

    /// A build without OpenSSL refuses these at client creation ("OpenSSL
    /// not available at build time").
    #[test]
    fn clients_of_this_build_speak_ssl_and_sasl_ssl() {
        for protocol in ["ssl", "sasl_ssl"] {
            let created: Result<rdkafka::consumer::BaseConsumer, _> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("security.protocol", protocol)
                .set("sasl.mechanisms", "SCRAM-SHA-512")
                .set("sasl.username", "probe")
                .set("sasl.password", "probe")
                .create();
            assert!(created.is_ok(), "{protocol}: {:?}", created.err());
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let error =
            |pairs: &[(&str, &str)]| Settings::from_vars(&vars(pairs)).unwrap_err().to_string();
        assert_eq!(
            error(&[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")]),
            "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE"
        );
        assert_eq!(
            error(&[
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("KAFKA_SASL_USERNAME", "intake"),
                ("KAFKA_SASL_PASSWORD_FILE", "/nonexistent/password"),
            ]),
            "KAFKA_SASL_PASSWORD_FILE=/nonexistent/password cannot be read"
        );
        assert_eq!(
            error(&[("KAFKA_SASL_USERNAME", "intake")]),
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE need KAFKA_SECURITY_PROTOCOL=sasl_ssl (or sasl_plaintext)"
        );
        assert_eq!(
            error(&[("KAFKA_SSL_CA_FILE", "/etc/hostname")]),
            "KAFKA_SSL_CA_FILE needs KAFKA_SECURITY_PROTOCOL=ssl or sasl_ssl (it is plaintext)"
        );
        assert_eq!(
            error(&[("KAFKA_SECURITY_PROTOCOL", "SASL-SSL")]),
            "KAFKA_SECURITY_PROTOCOL=SASL-SSL: expected plaintext or ssl or sasl_ssl or sasl_plaintext"
        );
        assert_eq!(
            error(&[
                ("KAFKA_SECURITY_PROTOCOL", "ssl"),
                ("KAFKA_SSL_CERTIFICATE_FILE", "/etc/hostname"),
            ]),
            "mutual TLS needs both KAFKA_SSL_CERTIFICATE_FILE and KAFKA_SSL_KEY_FILE"
        );
    }

    #[test]
    fn a_closed_port_is_unreachable_with_the_address_in_the_message() {
        let port = crate::testing::free_port();
        let brokers = format!("127.0.0.1:{port}");
        let error = super::check(&brokers, std::time::Duration::from_millis(500)).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("the Kafka broker at {brokers} is unreachable")),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
}
