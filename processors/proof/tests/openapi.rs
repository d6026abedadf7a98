//! docs/openapi.yaml against the real endpoints: every documented path is
//! served by the processor it names, refuses a caller without a token
//! (401), and answers a known caller with one of its documented statuses.

use psymatch_runtime::query::Tokens;
use psymatch_runtime::testing::{Running, TestBed, free_port, scratch_dir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

const TOKEN: &str = "staff-token-0123456789";

fn tokens() -> Tokens {
    Tokens::parse(&format!("test:staff:{TOKEN}")).unwrap()
}

fn config(bed: &TestBed, name: &str, port: u16) -> psymatch_runtime::config::RuntimeConfig {
    let mut config = bed.config(name);
    config.http_listen = format!("127.0.0.1:{port}");
    config.query_tokens = tokens();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_path_is_served_and_guarded() {
    let spec: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let bed = TestBed::new().await;
    let ports: BTreeMap<&str, u16> = ["matcher", "intake", "email_batcher", "scraper", "scheduler"]
        .into_iter()
        .map(|name| (name, free_port()))
        .collect();
    let mut running = vec![
        Running::start(
            psymatch_matcher::Matcher::new(psymatch_matcher::MatcherConfig::default()),
            config(&bed, "matcher", ports["matcher"]),
        ),
        Running::start(
            psymatch_intake::Intake,
            config(&bed, "intake", ports["intake"]),
        ),
    ];
    let mail = scratch_dir("psymatch-openapi-mail");
    let vars: BTreeMap<String, String> = [
        ("EMAIL_TRANSPORT".to_string(), "file".to_string()),
        ("EMAIL_FILE_DIR".to_string(), mail.display().to_string()),
    ]
    .into();
    let batcher = psymatch_email_batcher::EmailBatcher::new(
        psymatch_email_batcher::config::BatcherConfig::from_vars(&vars).unwrap(),
    )
    .unwrap();
    running.push(Running::start(
        batcher,
        config(&bed, "email_batcher", ports["email_batcher"]),
    ));
    let scraper = psymatch_scraper::Scraper::new(
        psymatch_scraper::config::ScraperConfig::from_vars(&BTreeMap::new()).unwrap(),
    );
    running.push(Running::start(
        scraper,
        config(&bed, "scraper", ports["scraper"]),
    ));
    // The scheduler is no consumer: its routes, guarded as its main serves them.
    let schedule = psymatch_scheduler::Schedule::parse(
        "timezone: Europe/Berlin\njobs:\n  - {name: sweep, cron: \"0 0 7 * * *\", topic: matching-commands, \
         event_type: matching.sweep, payload: {run_id: \"{run_id}\"}}\n",
    )
    .unwrap();
    let routes = psymatch_runtime::query::guarded(
        psymatch_scheduler::queries::routes(bed.pool.clone(), Arc::new(schedule)),
        Arc::new(tokens()),
        Arc::new(psymatch_runtime::surface::Metrics::new("scheduler")),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", ports["scheduler"]))
        .await
        .unwrap();
    let scheduler = tokio::spawn(async move { axum::serve(listener, routes).await });

    let client = reqwest::Client::new();
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 9, "{} paths", paths.len());
    for (template, item) in paths {
        let processor = item["x-processor"].as_str().unwrap();
        let port = ports[processor];
        let path = template
            .split('/')
            .map(|part| if part.starts_with('{') { "x-1" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let url = format!("http://127.0.0.1:{port}{path}");
        // The surface may need a moment after the processor's start.
        let started = std::time::Instant::now();
        let refused = loop {
            match client.get(&url).send().await {
                Ok(response) => break response.status().as_u16(),
                Err(error) => {
                    assert!(started.elapsed().as_secs() < 30, "{url}: {error}");
                    tokio::task::yield_now().await;
                }
            }
        };
        assert_eq!(refused, 401, "{processor} {template} without a token");
        let answered = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        let status = answered.status().as_u16().to_string();
        let documented = &item["get"]["responses"];
        assert!(
            documented.get(&status).is_some(),
            "{processor} {template} answered {status}, documented {documented}"
        );
        let body: Value = answered.json().await.unwrap();
        assert!(body.is_object(), "{template}: {body}");
    }
    scheduler.abort();
    for processor in running {
        processor.stop().await;
    }
}
