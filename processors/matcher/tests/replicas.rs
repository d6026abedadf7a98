//! Matcher replicas share the state: with fewer places than patients want
//! (10 practices x 6 < 40 patients x 2), every practice is filled to six
//! and not beyond, and no patient goes to more practices than allowed or to
//! one practice twice. One test runs two replicas on the real stream (one
//! consumes, the other stands by and takes over when it stops); others
//! hand batches to two replicas in turns (`run_batch`), as two replicas
//! consuming at once would, so one must reload what the other committed
//! (disabling the reload makes them fail).

use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::processor::{ProcessError, Processor};
use psymatch_runtime::testing::people;
use psymatch_runtime::testing::{
    Running, TestBed, free_port, fresh_database, metric, of_type, open_batch, query, run_batch,
    wait_until,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Fewer places than patients want: 10 practices x 6 < 40 patients x 2, so
/// replicas that did not see each other's inquiries would overfill them.
const PRACTICES: usize = 10;
const PATIENTS: usize = 40;
const PER_PATIENT: usize = 2;

fn discovered(n: usize) -> Value {
    people::discovered(n, (52.50 + n as f64 * 0.002, 13.40))
}

fn registered(n: usize) -> Value {
    people::registered(n, 30 + (n % 40) as i64, (52.52, 13.40 + n as f64 * 0.001))
}

/// The role and assigned partitions a replica's `/health/status` shows.
async fn role(port: u16) -> (String, usize) {
    let (_, status) = query(port, "/health/status", None).await;
    let role = status["role"].as_str().unwrap_or_default().to_string();
    (
        role,
        status["assigned_partitions"].as_array().map_or(0, Vec::len),
    )
}

const LOADS: &str = "psymatch_matcher_state_loads_total";

/// One replica consumes, the other stands by (its surface up, no
/// partitions) and takes over when the active one stops; a lease left by a
/// replica that was killed holds both back until it expires. The limits
/// hold across the hand-over, and the active replica never reloads the
/// state (replicas that took turns reloaded at every turn).
#[tokio::test(flavor = "multi_thread")]
async fn one_replica_consumes_and_a_standby_takes_over() {
    let bed = TestBed::new().await;
    let config = |port: u16| {
        let mut config = bed.config("matcher");
        config.http_listen = format!("127.0.0.1:{port}");
        config
    };
    let matcher = || {
        Matcher::new(MatcherConfig::with_rules(
            psymatch_matcher::rulebook::Rulebook {
                inquiries_per_patient: PER_PATIENT,
                ..Default::default()
            },
        ))
    };
    // A replica killed a moment ago: its lease has not expired.
    let group = config(0).group;
    sqlx::query(
        "INSERT INTO matcher.active_replica (group_id, holder, expires_at)
         VALUES ($1, gen_random_uuid(), now() + interval '10 minutes')",
    )
    .bind(&group)
    .execute(&bed.pool)
    .await
    .unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let a = Running::start(matcher(), config(port_a));
    let b = Running::start(matcher(), config(port_b));
    for port in [port_a, port_b] {
        bed.wait_for("both stand by", Duration::from_secs(60), || async move {
            reqwest::get(format!("http://127.0.0.1:{port}/health/status"))
                .await
                .is_ok()
                && role(port).await == ("standby".to_string(), 0)
        })
        .await;
        assert_eq!(metric(port, "psymatch_active", &[]).await, 0.0);
    }
    // The killed replica's lease expires.
    sqlx::query("UPDATE matcher.active_replica SET expires_at = now() - interval '1 second'")
        .execute(&bed.pool)
        .await
        .unwrap();
    let active = || async {
        let (ra, rb) = (role(port_a).await.0, role(port_b).await.0);
        match (ra.as_str(), rb.as_str()) {
            ("active", "standby") => Some((port_a, port_b)),
            ("standby", "active") => Some((port_b, port_a)),
            _ => None,
        }
    };
    bed.wait_for("one replica active", Duration::from_secs(60), || async {
        active().await.is_some()
    })
    .await;
    let (first, second) = active().await.unwrap();

    let practices: Vec<Value> = (0..PRACTICES).map(discovered).collect();
    bed.publish("therapist-events", &practices).await;
    let half: Vec<Value> = (0..PATIENTS / 2).map(registered).collect();
    bed.publish("patient-events", &half).await;
    bed.wait_consumed("matcher", "patient-events", (PATIENTS / 2) as i64)
        .await;
    assert_eq!(role(second).await, ("standby".to_string(), 0));
    assert_eq!(metric(first, "psymatch_active", &[]).await, 1.0);
    assert_eq!(
        metric(first, LOADS, &[]).await,
        1.0,
        "loaded once, at start"
    );
    assert_eq!(
        metric(second, LOADS, &[]).await,
        0.0,
        "a standby loads nothing"
    );

    // The active replica stops; the standby takes over and matches the rest.
    let (stopping, staying) = if first == port_a { (a, b) } else { (b, a) };
    stopping.stop().await;
    bed.wait_for("the standby took over", Duration::from_secs(60), || async {
        role(second).await.0 == "active"
    })
    .await;
    let rest: Vec<Value> = (PATIENTS / 2..PATIENTS).map(registered).collect();
    bed.publish("patient-events", &rest).await;
    bed.wait_consumed("matcher", "patient-events", PATIENTS as i64)
        .await;
    assert_eq!(
        metric(second, LOADS, &[]).await,
        1.0,
        "loaded once, on taking over"
    );
    staying.stop().await;
    assert_eq!(
        bed.count("SELECT count(*) FROM matcher.active_replica")
            .await,
        0,
        "a graceful stop gives the lease up"
    );
    let records = bed
        .read_until("email-commands", Duration::from_secs(60), |r| {
            of_type(r, "email.send_inquiry")
                .iter()
                .map(|i| i.payload()["patients"].as_array().unwrap().len())
                .sum::<usize>()
                >= PRACTICES * 6
        })
        .await;
    assert_limits(&records);
    assert_eq!(stored_per_practice(&bed.pool).await, vec![6; PRACTICES]);
}

/// Every practice filled to six and none beyond; no patient offered to
/// more practices than allowed or to one practice twice.
fn assert_limits(records: &[psymatch_runtime::testing::Received]) {
    let mut by_patient: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_practice: BTreeMap<String, usize> = BTreeMap::new();
    for inquiry in of_type(records, "email.send_inquiry") {
        let inquiry = inquiry.payload();
        let practice = inquiry["therapist_id"].as_str().unwrap().to_string();
        for patient in inquiry["patients"].as_array().unwrap() {
            by_patient
                .entry(patient["patient_id"].as_str().unwrap().to_string())
                .or_default()
                .push(practice.clone());
            *by_practice.entry(practice.clone()).or_default() += 1;
        }
    }
    for (patient, practices) in &by_patient {
        let distinct: BTreeSet<&String> = practices.iter().collect();
        assert!(
            practices.len() <= PER_PATIENT,
            "{patient} offered to {practices:?}"
        );
        assert_eq!(
            distinct.len(),
            practices.len(),
            "{patient}: a practice twice"
        );
    }
    assert_eq!(by_practice.len(), PRACTICES);
    assert!(
        by_practice.values().all(|n| *n == 6),
        "every practice filled to six, none beyond: {by_practice:?}"
    );
}

/// Places at each practice, from what the matcher stored.
async fn stored_per_practice(pool: &sqlx::PgPool) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT sum(cardinality(patient_ids))::bigint FROM matcher.inquiries GROUP BY therapist_id ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Two matchers on one database, each offering a patient to
/// [`PER_PATIENT`] practices; the first has taken in the practices.
async fn two_replicas_with_practices(pool: &sqlx::PgPool) -> (Matcher, Matcher) {
    let config = || {
        MatcherConfig::with_rules(psymatch_matcher::rulebook::Rulebook {
            inquiries_per_patient: PER_PATIENT,
            ..Default::default()
        })
    };
    let (a, b) = (Matcher::new(config()), Matcher::new(config()));
    let practices: Vec<Value> = (0..PRACTICES).map(discovered).collect();
    run_batch(&a, pool, "therapist-events", &practices).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_reloads_what_the_other_committed() {
    let (pool, _) = fresh_database().await;
    let (a, b) = two_replicas_with_practices(&pool).await;
    // B offers the first half of the patients: 20 x 2 of the 60 places.
    let first: Vec<Value> = (0..PATIENTS / 2).map(registered).collect();
    let offered_by_b = run_batch(&b, &pool, "patient-events", &first).await;
    assert_eq!(places(&offered_by_b), PATIENTS / 2 * PER_PATIENT);
    // A's memory still has none of them: it must reload before matching
    // the second half, which then gets only the 20 places left.
    let second: Vec<Value> = (PATIENTS / 2..PATIENTS).map(registered).collect();
    let offered_by_a = run_batch(&a, &pool, "patient-events", &second).await;
    assert_eq!(
        places(&offered_by_a),
        PRACTICES * 6 - PATIENTS / 2 * PER_PATIENT
    );
    let stored = stored_per_practice(&pool).await;
    assert_eq!(stored, vec![6; PRACTICES], "six per practice, none beyond");
}

/// Places offered by the inquiry emails among `emitted`.
fn places(emitted: &[(String, String, Value)]) -> usize {
    emitted
        .iter()
        .filter(|(_, t, _)| t == "email.send_inquiry")
        .map(|(_, _, p)| p["patients"].as_array().unwrap().len())
        .sum()
}

/// One matcher; its batch of the first half of the patients has written
/// but not committed; its batch of the second half starts from that
/// memory (without waiting) and is spawned: it matches, then waits for the
/// first to end before it writes. Returns the matcher, the first batch
/// (still open) and the second's task, once the second waits.
async fn one_batch_behind_another(
    pool: &sqlx::PgPool,
) -> (
    Arc<Matcher>,
    psymatch_runtime::testing::OpenBatch,
    tokio::task::JoinHandle<Result<Vec<(String, String, Value)>, ProcessError>>,
) {
    let matcher = Arc::new(Matcher::new(MatcherConfig::with_rules(
        psymatch_matcher::rulebook::Rulebook {
            inquiries_per_patient: PER_PATIENT,
            ..Default::default()
        },
    )));
    let practices: Vec<Value> = (0..PRACTICES).map(discovered).collect();
    run_batch(&*matcher, pool, "therapist-events", &practices).await;
    let first: Vec<Value> = (0..PATIENTS / 2).map(registered).collect();
    let open = open_batch(&*matcher, pool, "patient-events", &first)
        .await
        .expect("the first batch runs");
    let second: Vec<Value> = (PATIENTS / 2..PATIENTS).map(registered).collect();
    let (behind, db) = (Arc::clone(&matcher), pool.clone());
    let task = tokio::spawn(async move {
        let batch = open_batch(&*behind, &db, "patient-events", &second).await?;
        Ok(batch.commit(&*behind).await)
    });
    wait_until(
        "the second batch waits for the first",
        Duration::from_secs(30),
        || async { own_metric(&matcher, "matcher_batches_waiting") == 1.0 },
    )
    .await;
    (matcher, open, task)
}

/// The value of the matcher's gauge or counter `name`.
fn own_metric(matcher: &Matcher, name: &str) -> f64 {
    matcher
        .collectors()
        .iter()
        .flat_map(|c| c.collect())
        .filter(|family| family.name() == name)
        .map(|family| {
            let metric = &family.get_metric()[0];
            metric.get_gauge().get_value() + metric.get_counter().get_value()
        })
        .sum()
}

/// A matcher that warms up starts from what another replica committed:
/// its first batch does not load again and offers only the places left.
/// Once the other replica commits again, the next batch loads again.
#[tokio::test(flavor = "multi_thread")]
async fn a_warmed_up_matcher_starts_from_the_stored_state() {
    let (pool, _) = fresh_database().await;
    let (a, b) = two_replicas_with_practices(&pool).await;
    let quarter = |q: usize| -> Vec<Value> {
        (q * PATIENTS / 4..(q + 1) * PATIENTS / 4)
            .map(registered)
            .collect()
    };
    let per_quarter = PATIENTS / 4 * PER_PATIENT;
    assert_eq!(
        places(&run_batch(&a, &pool, "patient-events", &quarter(0)).await),
        per_quarter
    );
    b.warm_up(&pool).await.expect("the state loads");
    assert_eq!(own_metric(&b, "matcher_state_loads_total"), 1.0);
    let offered = run_batch(&b, &pool, "patient-events", &quarter(1)).await;
    assert_eq!(places(&offered), per_quarter);
    assert_eq!(
        own_metric(&b, "matcher_state_loads_total"),
        1.0,
        "the first batch went on from the warmed-up state"
    );
    // A fills the last places (after loading what B committed); B's next
    // batch must see that, so it loads again and finds none left.
    let left = PRACTICES * 6 - 2 * per_quarter;
    assert_eq!(
        places(&run_batch(&a, &pool, "patient-events", &quarter(2)).await),
        left.min(per_quarter)
    );
    let offered = run_batch(&b, &pool, "patient-events", &quarter(3)).await;
    assert_eq!(own_metric(&b, "matcher_state_loads_total"), 2.0);
    assert_eq!(
        places(&offered),
        left - left.min(per_quarter),
        "B saw what A committed after B warmed up"
    );
    assert_eq!(stored_per_practice(&pool).await, vec![6; PRACTICES]);
}

/// A batch that went on from the memory of a batch still committing gets
/// the places that batch left, once it commits: the later batch need not
/// wait for the earlier one's commit to start.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_goes_on_from_one_still_committing() {
    let (pool, _) = fresh_database().await;
    let (matcher, first, second) = one_batch_behind_another(&pool).await;
    let offered_first = first.commit(&*matcher).await;
    let offered_second = second.await.unwrap().expect("the second batch commits");
    assert_eq!(places(&offered_first), PATIENTS / 2 * PER_PATIENT);
    assert_eq!(
        places(&offered_second),
        PRACTICES * 6 - PATIENTS / 2 * PER_PATIENT,
        "the second batch saw the first one's places taken"
    );
    assert_eq!(stored_per_practice(&pool).await, vec![6; PRACTICES]);
}

/// When the batch before fails at its commit, the batch that went on from
/// its memory is refused with the reason and runs again from the stored
/// state: its patients then get the places the failed batch had taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_after_one_that_failed_runs_again_from_the_stored_state() {
    let (pool, _) = fresh_database().await;
    let (matcher, first, second) = one_batch_behind_another(&pool).await;
    first.roll_back().await;
    let refused = second
        .await
        .unwrap()
        .expect_err("the second batch is refused");
    let ProcessError::Transient(reason) = refused else {
        panic!("a refusal to retry, not {refused:?}");
    };
    assert!(
        reason.contains("runs again from the stored state"),
        "{reason}"
    );
    let second: Vec<Value> = (PATIENTS / 2..PATIENTS).map(registered).collect();
    let offered = run_batch(&*matcher, &pool, "patient-events", &second).await;
    assert_eq!(
        places(&offered),
        PATIENTS / 2 * PER_PATIENT,
        "every place the failed batch had taken is free again"
    );
    let searches: Vec<String> =
        sqlx::query_scalar("SELECT patient_id FROM matcher.searches ORDER BY patient_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut expected: Vec<String> = (PATIENTS / 2..PATIENTS).map(|n| format!("p-{n}")).collect();
    expected.sort();
    assert_eq!(searches, expected, "nothing of the failed batch is stored");
}

/// A practice's position can overtake its own discovery (geocoding results
/// and therapist events travel on different topics): the position is kept
/// until the therapist arrives, and the practice is then asked. Found by
/// the log-scan test, where it happened about once in seven runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_position_that_arrives_before_its_therapist_is_kept() {
    let (pool, _) = fresh_database().await;
    let matcher = Matcher::new(MatcherConfig::default());
    let geocoded = json!({"event_type": "geocoding.address_geocoded", "payload": {
        "request_id": "therapist-t-0", "position": {"latitude": 52.52, "longitude": 13.41},
        "precision": "ADDRESS", "source": "NOMINATIM", "note": null}});
    run_batch(&matcher, &pool, "geocoding-results", &[geocoded]).await;
    let mut practice = discovered(0);
    practice["payload"]["details"]["coordinates"] = Value::Null;
    run_batch(&matcher, &pool, "therapist-events", &[practice]).await;
    let emitted = run_batch(&matcher, &pool, "patient-events", &[registered(0)]).await;
    let asked: Vec<&Value> = emitted
        .iter()
        .filter(|(_, t, _)| t == "email.send_inquiry")
        .map(|(_, _, p)| &p["therapist_id"])
        .collect();
    assert_eq!(asked, vec!["t-0"]);
}

/// Patients' home positions are intake's: a batch of only those takes no
/// turn on the state (the version stays), while one that also holds a
/// practice's position does.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_nothing_for_the_matcher_takes_no_turn() {
    let (pool, _) = fresh_database().await;
    let matcher = Matcher::new(MatcherConfig::default());
    let position = |request: &str| {
        json!({"event_type": "geocoding.address_geocoded", "payload": {
            "request_id": request, "position": {"latitude": 52.52, "longitude": 13.41},
            "precision": "ADDRESS", "source": "NOMINATIM", "note": null}})
    };
    let version = || async {
        sqlx::query_scalar::<_, i64>("SELECT version FROM matcher.world")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = version().await;
    let homes = [position("patient-p-1-1"), position("patient-p-2-1")];
    run_batch(&matcher, &pool, "geocoding-results", &homes).await;
    assert_eq!(version().await, before, "homes alone: no turn");

    let mixed = [position("patient-p-3-1"), position("therapist-t-7")];
    run_batch(&matcher, &pool, "geocoding-results", &mixed).await;
    assert_eq!(version().await, before + 1, "a practice's position: a turn");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM matcher.therapists WHERE therapist_id = 't-7'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);
}
