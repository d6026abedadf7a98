//! PostgreSQL: connection and the migrations every processor applies at start.

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// Every migration of `migrations/`, compiled into the binary so that a
/// processor needs no files at run time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// The default database: the local stack's.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/psymatch";

/// `DATABASE_URL` from the environment, else [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string())
}

/// Opens a pool; fails within seconds when the server does not answer.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    connect_sized(url, 8).await
}

/// [`connect`] with a given number of connections.
pub async fn connect_sized(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    match PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
    {
        Ok(pool) => Ok(pool),
        Err(error) => {
            // The pool reports a timeout; one connection of its own says
            // why (TLS, authentication), so that the message can say what
            // to do.
            let reason = match tokio::time::timeout(
                Duration::from_secs(5),
                <sqlx::PgConnection as sqlx::Connection>::connect(url),
            )
            .await
            {
                Ok(Err(direct)) => direct.to_string(),
                _ => error.to_string(),
            };
            let hint = tls_hint(&reason)
                .map(|hint| format!("; {hint}"))
                .unwrap_or_default();
            Err(anyhow::anyhow!(
                "cannot connect to PostgreSQL at {}: {}{hint}",
                redact(url),
                reason.lines().next().unwrap_or_default()
            ))
        }
    }
}

/// What to do about a connection refused for TLS, from its reason.
fn tls_hint(reason: &str) -> Option<&'static str> {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("certificate") || reason.contains("unknownissuer") {
        Some(
            "the server's certificate is not trusted: name its CA in DATABASE_URL (sslmode=verify-full&sslrootcert=<CA file>)",
        )
    } else if reason.contains("no encryption") || reason.contains("ssl off") {
        Some(
            "the server requires TLS: add sslmode=verify-full&sslrootcert=<CA file> to DATABASE_URL",
        )
    } else if reason.contains("server does not support tls")
        || reason.contains("server does not support ssl")
    {
        Some(
            "the server does not offer TLS: enable ssl on the server, or leave sslmode out of DATABASE_URL on a local one",
        )
    } else {
        None
    }
}

/// Applies every pending migration. Safe to run from several processes at
/// once: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")
}

/// Makes sure the database holds every migration: checks first (a
/// processor's own role may read which migrations ran but not create
/// tables), and migrates only when something is missing, which needs the
/// owner's role (`psymatch migrate` in production; the superuser of a local
/// stack or a test may do it at start).
pub async fn ensure_migrated(pool: &PgPool) -> anyhow::Result<()> {
    let expected: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let applied: Result<i64, sqlx::Error> = sqlx::query_scalar(
        "SELECT count(*) FROM public._sqlx_migrations WHERE success AND version = ANY($1)",
    )
    .bind(&expected)
    .fetch_one(pool)
    .await;
    if matches!(applied, Ok(n) if n == expected.len() as i64) {
        return Ok(());
    }
    migrate(pool).await.with_context(|| {
        format!(
            "the database lacks migrations (this build expects {} up to version {}) and \
             this role cannot apply them: run `psymatch migrate` with the owner's DATABASE_URL",
            expected.len(),
            expected.last().copied().unwrap_or_default()
        )
    })
}

/// The schemas with a role of their own (migration 0011).
pub const PROCESSOR_SCHEMAS: [&str; 8] = [
    "intake",
    "scraper",
    "geocoder",
    "matcher",
    "email_batcher",
    "scheduler",
    "registry",
    "example",
];

/// The processor's own database role (migration 0011): `psymatch_<schema>`.
pub fn role_of(schema: &str) -> String {
    format!("psymatch_{schema}")
}

/// Gives every processor's role `password` (servers that ask for one).
pub async fn set_role_passwords(pool: &PgPool, password: &str) -> anyhow::Result<()> {
    for schema in PROCESSOR_SCHEMAS {
        // ALTER ROLE takes no bind parameters: the server quotes the literal.
        let literal: String = sqlx::query_scalar("SELECT quote_literal($1)")
            .bind(password)
            .fetch_one(pool)
            .await?;
        sqlx::query(&format!(
            "ALTER ROLE {} PASSWORD {literal}",
            role_of(schema)
        ))
        .execute(pool)
        .await
        .with_context(|| format!("setting the password of {}", role_of(schema)))?;
    }
    Ok(())
}

/// `url` with another user and without a password (local servers that
/// trust loopback, tests).
pub fn with_user(url: &str, user: &str) -> String {
    match url.find("://") {
        Some(scheme) => {
            let rest = &url[scheme + 3..];
            let host = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
            format!("{}{user}@{host}", &url[..scheme + 3])
        }
        None => url.to_string(),
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Why PostgreSQL refuses a record's data for good, if it does: an error
/// of SQLSTATE class 22 (data exception: NUL in text, an invalid
/// encoding, a number out of a column's range), 23 (integrity constraint)
/// or 54 (program limit: a value too large to index). Retrying such a
/// record can never succeed. Every other error (connection, serialization
/// failure, deadlock, a missing table) is worth retrying. The reason gives
/// the SQLSTATE and its class, never the database's message, which may
/// quote the value.
pub fn refusal(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(database) = error else {
        return None;
    };
    let code = database.code()?;
    let class = match code.get(..2)? {
        "22" => "a value the column cannot hold",
        "23" => "a constraint the record breaks",
        "54" => "a value beyond the database's limits",
        _ => return None,
    };
    Some(format!(
        "the database refuses the record's data: {class} (SQLSTATE {code})"
    ))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("postgres:///x"), "postgres:///x");
    }

    #[test]
    fn with_user_replaces_user_and_drops_the_password() {
        assert_eq!(
            super::with_user("postgres://app:secret@db:5432/x", "psymatch_intake"),
            "postgres://psymatch_intake@db:5432/x"
        );
        assert_eq!(
            super::with_user("postgres://127.0.0.1/x", "r"),
            "postgres://r@127.0.0.1/x"
        );
    }
}
