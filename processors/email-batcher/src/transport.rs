//! Handing an email over: SMTP with lettre (STARTTLS or TLS, credentials,
//! a trusted certificate for a local relay, a connection pool), or a file
//! per email for local use.

use crate::config::{BatcherConfig, Delivery};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How handing over failed.
#[derive(Debug, Clone)]
pub struct SendError {
    /// The server refused for good (5xx): retrying cannot help.
    pub permanent: bool,
    /// What happened, for a person (no addresses).
    pub reason: String,
}

/// Where mail goes.
pub enum Transport {
    /// An SMTP relay.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// Files in a directory.
    File(AsyncFileTransport<Tokio1Executor>),
}

impl Transport {
    /// The transport `config` describes.
    pub fn new(config: &BatcherConfig) -> anyhow::Result<Transport> {
        Ok(match &config.delivery {
            Delivery::File(dir) => {
                std::fs::create_dir_all(dir)?;
                Transport::File(AsyncFileTransport::new(dir))
            }
            Delivery::Smtp {
                host,
                port,
                security,
                credentials,
                ca_certificate,
                pool_size,
            } => {
                let tls = || -> anyhow::Result<TlsParameters> {
                    let mut builder = TlsParameters::builder(host.clone());
                    if let Some(path) = ca_certificate {
                        let pem = std::fs::read(path)
                            .map_err(|e| anyhow::anyhow!("SMTP_CA_CERT {}: {e}", path.display()))?;
                        builder = builder.add_root_certificate(Certificate::from_pem(&pem)?);
                    }
                    Ok(builder.build_rustls()?)
                };
                let mut builder = match security.as_str() {
                    "none" => {
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
                    }
                    "starttls" => {
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
                            .tls(Tls::Required(tls()?))
                    }
                    _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
                        .tls(Tls::Wrapper(tls()?)),
                };
                builder = builder
                    .port(*port)
                    .timeout(Some(std::time::Duration::from_secs(30)))
                    .pool_config(PoolConfig::new().max_size(*pool_size));
                if let Some((user, password)) = credentials {
                    builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
                }
                Transport::Smtp(builder.build())
            }
        })
    }

    /// Hands `message` over.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        match self {
            Transport::Smtp(smtp) => smtp.send(message).await.map(|_| ()).map_err(|e| SendError {
                permanent: e.is_permanent(),
                reason: format!("SMTP: {e}"),
            }),
            Transport::File(file) => file.send(message).await.map(|_| ()).map_err(|e| SendError {
                permanent: false,
                reason: format!("writing the email file: {e}"),
            }),
        }
    }
}
