//! The email batcher's configuration, from the environment
//! (docs/processors/email-batcher.md).

use anyhow::{Context as _, bail};
use psymatch_runtime::config::Vars;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How mail leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An SMTP relay.
    Smtp {
        /// Host name (also the name its certificate must carry).
        host: String,
        /// Port.
        port: u16,
        /// `none`, `starttls` or `tls`.
        security: String,
        /// User name and password, when the relay wants them.
        credentials: Option<(String, String)>,
        /// A PEM certificate to trust (a local relay's self-signed one).
        ca_certificate: Option<PathBuf>,
        /// Connections kept open.
        pool_size: u32,
    },
    /// One `.eml` file per email in this directory (local use).
    File(PathBuf),
}

/// Everything the email batcher reads from its environment.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// How mail leaves.
    pub delivery: Delivery,
    /// The From address.
    pub from: String,
    /// The templates folder (replaceable without a rebuild).
    pub templates: PathBuf,
    /// One inquiry email per address per this long.
    pub window: Duration,
    /// An attempt older than this whose outcome was never recorded is
    /// reported as unknown (its process stopped while handing it over).
    pub attempt_timeout: Duration,
    /// Attempts per email on transient SMTP errors.
    pub attempts: u32,
    /// First backoff between attempts.
    pub backoff: Duration,
    /// Emails handed to SMTP at the same time.
    pub concurrency: usize,
    /// How long a flush waits for the partitions still behind it to be
    /// read before it leaves their inquiries for a later flush.
    pub catch_up: Duration,
}

impl BatcherConfig {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<BatcherConfig> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        BatcherConfig::from_vars(&vars)
    }

    /// Reads from a map of variables (tests pass their own).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> anyhow::Result<BatcherConfig> {
        let v = Vars(vars);
        // Every setting is read whichever transport is chosen: a setting
        // read is one `refuse_unknown` knows (the stack's environment sets
        // SMTP_HOST for every process).
        let transport = v.text("EMAIL_TRANSPORT", "smtp");
        let security = v.text("SMTP_SECURITY", "starttls");
        let user = v.text("SMTP_USERNAME", "");
        let password = v.text("SMTP_PASSWORD", "");
        let host = v.text("SMTP_HOST", "127.0.0.1");
        let port = v.number("SMTP_PORT", 587u16)?;
        let ca_certificate = v.text("SMTP_CA_CERT", "");
        let pool_size = v.number("SMTP_POOL_SIZE", 4u32)?.max(1);
        let file_dir = v.text("EMAIL_FILE_DIR", "/var/lib/psymatch/outbox");
        let delivery = match transport.as_str() {
            "smtp" => {
                if !["none", "starttls", "tls"].contains(&security.as_str()) {
                    bail!("SMTP_SECURITY={security}: expected none, starttls or tls");
                }
                Delivery::Smtp {
                    host,
                    port,
                    security,
                    credentials: (!user.is_empty()).then_some((user, password)),
                    ca_certificate: Some(ca_certificate)
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from),
                    pool_size,
                }
            }
            "file" => Delivery::File(file_dir.into()),
            other => bail!("EMAIL_TRANSPORT={other}: expected smtp or file"),
        };
        let from = v.text("EMAIL_FROM", "psymatch <anfragen@psymatch.invalid>");
        from.parse::<lettre::message::Mailbox>()
            .with_context(|| format!("EMAIL_FROM={from} is not an address"))?;
        let default_templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
        Ok(BatcherConfig {
            delivery,
            from,
            templates: v.text("TEMPLATES_DIR", default_templates).into(),
            window: Duration::from_secs(86_400 * v.number("EMAIL_WINDOW_DAYS", 7u64)?),
            attempt_timeout: Duration::from_secs(v.number("ATTEMPT_TIMEOUT_SECS", 600u64)?),
            attempts: v.number("SMTP_ATTEMPTS", 4u32)?.max(1),
            backoff: Duration::from_millis(v.number("SMTP_BACKOFF_MS", 1_000u64)?),
            concurrency: v.number("SMTP_CONCURRENCY", 4usize)?.max(1),
            catch_up: Duration::from_secs(v.number("FLUSH_CATCH_UP_SECS", 15u64)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let config = BatcherConfig::from_vars(&BTreeMap::new()).unwrap();
        assert_eq!(config.window, Duration::from_secs(7 * 86_400));
        assert!(matches!(config.delivery, Delivery::Smtp { port: 587, .. }));
        let vars = BTreeMap::from([("SMTP_SECURITY".to_string(), "ssl3".to_string())]);
        assert!(
            BatcherConfig::from_vars(&vars)
                .unwrap_err()
                .to_string()
                .contains("SMTP_SECURITY=ssl3")
        );
        let vars = BTreeMap::from([("EMAIL_FROM".to_string(), "not an address".to_string())]);
        assert!(
            BatcherConfig::from_vars(&vars)
                .unwrap_err()
                .to_string()
                .contains("EMAIL_FROM")
        );
    }
}
