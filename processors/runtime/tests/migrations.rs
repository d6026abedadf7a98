//! The migrations on a real, empty database.

use psymatch_runtime::{db, testing::fresh_database};

#[tokio::test]
async fn migrations_create_one_schema_per_processor_and_rerun_as_no_ops() {
    let (pool, _) = fresh_database().await;
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name::text FROM information_schema.schemata ORDER BY schema_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for expected in [
        "email_batcher",
        "geocoder",
        "intake",
        "matcher",
        "registry",
        "scheduler",
        "scraper",
    ] {
        assert!(
            schemas.iter().any(|s| s == expected),
            "{expected} missing from {schemas:?}"
        );
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());
    db::migrate(&pool).await.unwrap();
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(again, applied);
}
