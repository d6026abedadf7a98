//! PostgreSQL over TLS, as managed services require it: with
//! `sslmode=verify-full` and the server's CA in `sslrootcert`, a processor's
//! pool connects encrypted and migrates; without TLS, or trusting another
//! CA, the connection is refused with one line that says what to do.

use psymatch_runtime::db;
use psymatch_runtime::testing::OwnPostgres;
use psymatch_runtime::testing::tls::Ca;

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_connects_encrypted_and_anything_less_is_refused_with_what_to_do() {
    let ca = Ca::new("psymatch test CA");
    let server = OwnPostgres::start_tls(&ca);
    let url = server.url();

    let secured = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        ca.cert.display()
    );
    let pool = db::connect(&secured).await.expect("verify-full connects");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(encrypted, "the connection is encrypted");
    db::ensure_migrated(&pool).await.expect("migrates over TLS");
    pool.close().await;

    let plain = format!("{url}?sslmode=disable");
    let refused = db::connect(&plain).await.unwrap_err().to_string();
    assert!(
        refused.contains(
            "the server requires TLS: add sslmode=verify-full&sslrootcert=<CA file> to DATABASE_URL"
        ),
        "{refused}"
    );
    assert_eq!(refused.lines().count(), 1, "{refused}");

    let stranger = Ca::new("another CA");
    let untrusted = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        stranger.cert.display()
    );
    let refused = db::connect(&untrusted).await.unwrap_err().to_string();
    assert!(
        refused.contains("the server's certificate is not trusted"),
        "{refused}"
    );
    assert_eq!(refused.lines().count(), 1, "{refused}");
}
