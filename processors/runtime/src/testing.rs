//! Helpers for tests against the real local stack (`scripts/stack up`).
//!
//! Tests never skip for want of a service: a missing one is a failure that
//! says how to start it.

use crate::db;
use sqlx::PgPool;

/// An environment variable the stack exports, or a panic naming the fix.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the local stack with scripts/stack up and `. .stack/env`")
    })
}

/// A new, migrated database of its own for one test, on the server of
/// `DATABASE_URL`. The stack drops these on its next start.
pub async fn fresh_database() -> (PgPool, String) {
    let base_url = stack_env("DATABASE_URL");
    let server = base_url
        .rsplit_once('/')
        .map_or(base_url.as_str(), |(server, _)| server);
    let admin = db::connect(&format!("{server}/postgres"))
        .await
        .expect("the stack's PostgreSQL answers");
    let name = format!("psymatch_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("creating a test database");
    admin.close().await;
    let url = format!("{server}/{name}");
    let pool = db::connect(&url)
        .await
        .expect("connecting to the test database");
    db::migrate(&pool)
        .await
        .expect("migrating the test database");
    (pool, url)
}
