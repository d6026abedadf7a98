//! PgBouncer in front of PostgreSQL, TLS on both sides, in session pooling
//! (the only mode psymatch's connections allow: prepared statements, and
//! advisory locks in lease mode). Three replicas of every processor of the
//! chain run once straight against PostgreSQL and once through PgBouncer,
//! each with `sslmode=verify-full`; both do the same work, every server
//! connection PgBouncer opens is TLS, and the test prints the PostgreSQL
//! server connections each way (docs/operations.md says what they mean).

use psymatch_proof::processes::{self, Process};
use psymatch_runtime::testing::tls::Ca;
use psymatch_runtime::testing::{
    OwnPgBouncer, OwnPostgres, TestBed, people, scratch_dir, stack_env,
};
use std::time::Duration;

const REPLICAS: usize = 3;
const PATIENTS: usize = 60;
const THERAPISTS: usize = 30;

/// Server connections of the processors' roles to `database`, and whether
/// every one is encrypted.
async fn server_connections(admin: &sqlx::PgPool, database: &str) -> (i64, bool) {
    sqlx::query_as(
        "SELECT count(*), coalesce(bool_and(s.ssl), false)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.datname = $1 AND a.usename LIKE 'psymatch\\_%'",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Runs the chain with three replicas each in `bed` until every search
/// exists; the processes, still running.
async fn chain_in(bed: &TestBed, label: &str) -> Vec<Process> {
    let logs = scratch_dir(&format!("pgbouncer-{label}"));
    let mail = logs.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let mut running = Vec::new();
    for _ in 0..REPLICAS {
        running.extend(
            processes::start_all(bed, processes::chain(&mail), &[], &logs)
                .await
                .unwrap(),
        );
    }
    let therapists: Vec<_> = (0..THERAPISTS)
        .map(|n| people::practice(&format!("pool-t-{n}"), "1", "10115"))
        .collect();
    bed.publish("therapist-commands", &therapists).await;
    let patients: Vec<_> = (0..PATIENTS)
        .map(|n| people::registration(&format!("pool-p-{n}"), "10117"))
        .collect();
    bed.publish("patient-commands", &patients).await;
    bed.wait_for(
        &format!("{label}: every search in the matcher"),
        Duration::from_secs(180),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM matcher.searches")
                .fetch_one(&bed.pool)
                .await
                .is_ok_and(|n| n == PATIENTS as i64)
        },
    )
    .await;
    running
}

fn database_of(url: &str) -> String {
    url.split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_of_the_chain_work_through_pgbouncer_with_tls_on_both_sides() {
    let ca = Ca::new("psymatch PgBouncer CA");
    let postgres = OwnPostgres::start_tls(&ca);
    // Room for both runs at once: the point is to count, not to refuse.
    postgres.set("max_connections", "400");
    postgres.pg_ctl("restart");
    let mut bouncer = OwnPgBouncer::start(&postgres, &ca, 50);
    let url = |address: String| {
        format!(
            "postgres://postgres@{address}/postgres?sslmode=verify-full&sslrootcert={}",
            ca.cert.display()
        )
    };
    let direct_url = url(format!("127.0.0.1:{}", postgres.port()));
    let admin = psymatch_runtime::db::connect(&direct_url).await.unwrap();
    let brokers = stack_env("KAFKA_BROKERS");

    let direct = TestBed::with(&brokers, &direct_url).await;
    let direct_running = chain_in(&direct, "direct").await;
    let (direct_count, direct_tls) =
        server_connections(&admin, &database_of(&direct.database_url)).await;
    drop(direct_running);

    let pooled = TestBed::with(&brokers, &url(bouncer.address())).await;
    let pooled_running = chain_in(&pooled, "pgbouncer").await;
    let (pooled_count, pooled_tls) =
        server_connections(&admin, &database_of(&pooled.database_url)).await;
    drop(pooled_running);

    println!(
        "{REPLICAS} replicas of intake, geocoder, matcher and email batcher; {PATIENTS} patients, {THERAPISTS} therapists"
    );
    println!("| path | PostgreSQL server connections of the processors | all TLS |");
    println!("|---|---|---|");
    println!("| straight to PostgreSQL | {direct_count} | {direct_tls} |");
    println!("| through PgBouncer (session pooling) | {pooled_count} | {pooled_tls} |");
    assert!(direct_count > 0 && pooled_count > 0);
    // PgBouncer's own connections to the server verify it and encrypt.
    assert!(pooled_tls, "a server connection of PgBouncer without TLS");
    assert!(bouncer.running(), "{}", bouncer.log());
    // The processors' connections went through it.
    assert!(
        bouncer.log().contains(&database_of(&pooled.database_url)),
        "{}",
        bouncer.log()
    );
}
