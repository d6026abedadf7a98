//! Two flushes reporting at once report each settled email once.

use psymatch_email_batcher::store;
use psymatch_runtime::testing::fresh_database;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flushes_reporting_at_once_report_each_email_once() {
    let (pool, _) = fresh_database().await;
    for n in 0..3 {
        sqlx::query(
            "INSERT INTO email_batcher.emails (email_id, kind, recipient, message_id, status, sent_at)
             VALUES ($1, 'inquiry', $2, $3, 'SENT', now())",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(format!("practice-{n}@example.org"))
        .bind(format!("<m{n}@example.org>"))
        .execute(&pool)
        .await
        .unwrap();
    }
    let mut first = pool.begin().await.unwrap();
    let reported_first = store::report(&mut first).await.unwrap();
    assert_eq!(reported_first.len(), 3);
    // The second flush's transaction, started while the first holds the rows.
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SELECT set_config('application_name', 'second-flush', true)")
                .execute(&mut *tx)
                .await
                .unwrap();
            let reported = store::report(&mut tx).await.unwrap();
            tx.commit().await.unwrap();
            reported
        })
    };
    // It has taken its snapshot and waits for the first's row locks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'second-flush' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second flush never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.commit().await.unwrap();
    let reported_second = second.await.unwrap();
    assert_eq!(
        reported_second.len(),
        0,
        "the second flush reported what the first did"
    );
}
