//! How every binary reaches the schema registry, as it reaches Kafka
//! ([`crate::broker`]): one set of settings per registry URL, read from the
//! environment, secrets from files and never shown.
//!
//! | variable | meaning |
//! |---|---|
//! | `SCHEMA_REGISTRY_CA_FILE` | PEM file of the CA that signed an `https://` registry (else the system's CAs) |
//! | `SCHEMA_REGISTRY_USERNAME`, `SCHEMA_REGISTRY_PASSWORD_FILE` | HTTP basic auth (Confluent Cloud: the API key and a file with its secret) |
//! | `SCHEMA_REGISTRY_TOKEN_FILE` | a bearer token, from a file (re-read at start only) |

use crate::config::Vars;
use anyhow::{Context, bail};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Who the registry is told the caller is.
#[derive(Clone, Default)]
enum Authorization {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    Token(String),
}

/// The registry settings of a process.
#[derive(Clone, Default)]
pub struct RegistrySettings {
    /// The CA's PEM, when not the system's.
    ca: Option<Vec<u8>>,
    authorization: Authorization,
}

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let authorization = match &self.authorization {
            Authorization::None => "none".to_string(),
            Authorization::Basic { username, .. } => format!("basic {username} <secret>"),
            Authorization::Token(_) => "bearer <secret>".to_string(),
        };
        f.debug_struct("RegistrySettings")
            .field("ca", &self.ca.is_some())
            .field("authorization", &authorization)
            .finish()
    }
}

impl RegistrySettings {
    /// Reads the settings from `vars` (files are read now: a missing one
    /// stops the start with the setting's name).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> anyhow::Result<RegistrySettings> {
        let v = Vars(vars);
        let ca_file = v.text("SCHEMA_REGISTRY_CA_FILE", "");
        let username = v.text("SCHEMA_REGISTRY_USERNAME", "");
        let password_file = v.text("SCHEMA_REGISTRY_PASSWORD_FILE", "");
        let token_file = v.text("SCHEMA_REGISTRY_TOKEN_FILE", "");
        let ca = if ca_file.is_empty() {
            None
        } else {
            let pem = std::fs::read(&ca_file)
                .with_context(|| format!("SCHEMA_REGISTRY_CA_FILE={ca_file} cannot be read"))?;
            reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("SCHEMA_REGISTRY_CA_FILE={ca_file} holds no PEM certificate")
            })?;
            Some(pem)
        };
        let authorization = match (
            username.is_empty(),
            password_file.is_empty(),
            token_file.is_empty(),
        ) {
            (true, true, true) => Authorization::None,
            (false, false, true) => Authorization::Basic {
                username,
                password: crate::broker::secret_file(
                    "SCHEMA_REGISTRY_PASSWORD_FILE",
                    &password_file,
                )?,
            },
            (true, true, false) => Authorization::Token(crate::broker::secret_file(
                "SCHEMA_REGISTRY_TOKEN_FILE",
                &token_file,
            )?),
            (_, _, false) => bail!(
                "SCHEMA_REGISTRY_TOKEN_FILE or SCHEMA_REGISTRY_USERNAME with SCHEMA_REGISTRY_PASSWORD_FILE: one of the two"
            ),
            _ => bail!(
                "basic auth needs both SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD_FILE"
            ),
        };
        Ok(RegistrySettings { ca, authorization })
    }

    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<RegistrySettings> {
        RegistrySettings::from_vars(&std::env::vars().collect())
    }

    /// An HTTP client that trusts the CA and sends the authorization.
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = match &self.authorization {
            Authorization::None => None,
            Authorization::Basic { username, password } => {
                use base64::Engine;
                let pair = format!("{username}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            Authorization::Token(token) => Some(format!("Bearer {token}")),
        };
        if let Some(value) = value
            && let Ok(mut value) = reqwest::header::HeaderValue::from_str(&value)
        {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        self.builder()
            .default_headers(headers)
            .build()
            .expect("an HTTP client for the registry")
    }

    /// The schema registry converter's settings for `url`.
    pub fn converter(&self, url: &str) -> SrSettings {
        let mut builder = SrSettings::new_builder(url.to_string());
        builder.set_timeout(Duration::from_secs(30));
        match &self.authorization {
            Authorization::None => {}
            Authorization::Basic { username, password } => {
                builder.set_basic_authorization(username, Some(password));
            }
            Authorization::Token(token) => {
                builder.set_token_authorization(token);
            }
        }
        builder
            .build_with(self.builder())
            .expect("the registry converter's settings")
    }

    fn builder(&self) -> reqwest::ClientBuilder {
        let mut builder = reqwest::Client::builder();
        if let Some(certificate) = self
            .ca
            .as_deref()
            .and_then(|pem| reqwest::Certificate::from_pem(pem).ok())
        {
            builder = builder.add_root_certificate(certificate);
        }
        builder
    }
}

fn registered() -> &'static Mutex<HashMap<String, Arc<RegistrySettings>>> {
    static REGISTERED: OnceLock<Mutex<HashMap<String, Arc<RegistrySettings>>>> = OnceLock::new();
    REGISTERED.get_or_init(Default::default)
}

/// Every client of this process that talks to `url` uses `settings`.
pub fn use_settings(url: &str, settings: RegistrySettings) {
    registered()
        .lock()
        .expect("registry settings lock")
        .insert(url.trim_end_matches('/').to_string(), Arc::new(settings));
}

/// The settings registered for `url` (none: plain HTTP or the system's CAs,
/// no authorization).
pub fn settings(url: &str) -> Arc<RegistrySettings> {
    registered()
        .lock()
        .expect("registry settings lock")
        .get(url.trim_end_matches('/'))
        .cloned()
        .unwrap_or_default()
}

/// A registry's refusal or silence, in one line with what to do.
pub fn explain(url: &str, status: Option<reqwest::StatusCode>, error: &str) -> String {
    match status.map(|s| s.as_u16()) {
        Some(401) => format!(
            "the schema registry at {url} refused the credentials (401): check SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD_FILE, or SCHEMA_REGISTRY_TOKEN_FILE"
        ),
        Some(403) => {
            format!("the schema registry at {url} does not let this principal do that (403)")
        }
        _ if error.contains("certificate") || error.contains("UnknownIssuer") => format!(
            "the schema registry's TLS certificate at {url} is not trusted: set SCHEMA_REGISTRY_CA_FILE to the CA that signed it"
        ),
        _ => format!("the schema registry at {url} does not answer: {error}"),
    }
}
