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

/// Least privilege (migration 0011): every processor's role reads and
/// writes every table of its own schema and no table of any other, and
/// cannot create tables anywhere; `ensure_migrated` lets such a role start
/// on a migrated database and refuses, with the fix, on one that is not.
#[tokio::test]
async fn each_processor_role_can_use_only_its_own_schema() {
    let (pool, url) = fresh_database().await;
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
          WHERE table_schema = ANY($1) ORDER BY 1, 2",
    )
    .bind(db::PROCESSOR_SCHEMAS.to_vec())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.len() > 20, "{tables:?}");
    let mut checked = 0;
    for schema in db::PROCESSOR_SCHEMAS {
        let own = db::connect_sized(&db::with_user(&url, &db::role_of(schema)), 1)
            .await
            .unwrap();
        db::ensure_migrated(&own).await.unwrap();
        for (table_schema, table) in &tables {
            let read = sqlx::query(&format!("SELECT * FROM {table_schema}.{table} LIMIT 1"))
                .fetch_all(&own)
                .await;
            if table_schema == schema {
                assert!(read.is_ok(), "{schema} cannot read its {table}: {read:?}");
                // Write access, undone: a transaction that deletes nothing for real.
                let mut tx = own.begin().await.unwrap();
                sqlx::query(&format!("DELETE FROM {table_schema}.{table}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap_or_else(|e| panic!("{schema} cannot write its {table}: {e}"));
                tx.rollback().await.unwrap();
            } else {
                let error = read.expect_err(&format!("{schema} reads {table_schema}.{table}"));
                let code = error.as_database_error().and_then(|e| e.code());
                assert_eq!(
                    code.as_deref(),
                    Some("42501"),
                    "{schema} on {table_schema}.{table}: {error}"
                );
            }
            checked += 1;
        }
        // The key store (crypto-shredding): intake keeps the keys, the
        // geocoder reads them, nobody else sees them.
        let keys = sqlx::query("SELECT * FROM keystore.patient_keys LIMIT 1")
            .fetch_all(&own)
            .await;
        assert_eq!(
            keys.is_ok(),
            schema == "intake" || schema == "geocoder",
            "{schema} on keystore.patient_keys: {keys:?}"
        );
        for target in [schema, "public"] {
            let created = sqlx::query(&format!("CREATE TABLE {target}.intruder (x int)"))
                .execute(&own)
                .await;
            assert!(created.is_err(), "{schema} created a table in {target}");
        }
        own.close().await;
    }
    assert_eq!(checked, tables.len() * db::PROCESSOR_SCHEMAS.len());

    // A database one migration behind: the role may not apply it and says so.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let matcher = db::connect_sized(&db::with_user(&url, "psymatch_matcher"), 1)
        .await
        .unwrap();
    let refused = db::ensure_migrated(&matcher).await.unwrap_err();
    assert!(
        format!("{refused:#}").contains("run `psymatch migrate`"),
        "{refused:#}"
    );
}
