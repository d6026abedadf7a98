//! `psymatch-scraper-bench`: answers of the doctor search parsed per
//! second, a 50-result JSON answer and a 50-result saved page, each against
//! the bare parse of the same bytes measured in the same run (serde_json
//! into a `Value`, html5ever into a document): the ratio is what reading
//! the practices out of the parsed input costs on top.
//!
//! Usage: `psymatch-scraper-bench [ITERATIONS]` (default 2,000).

use psymatch_scraper::fake::practice;
use psymatch_scraper::therapist::{Implied, normalise};
use psymatch_scraper::{html, kbv};
use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

/// A saved page with `n` practices in the layout of the fixture.
fn page(n: usize) -> String {
    let mut out = String::from("<!DOCTYPE html><html><body><main><h1>Suchergebnisse</h1>");
    for i in 0..n {
        out.push_str(&format!(
            "<section><h3>Frau Dr. Vorname{i} Nachname{i}</h3><p>Psychologische Psychotherapeutin · Verhaltenstherapie</p>\
             <p>Teststraße {i}<br>10115 Berlin</p><p>Tel.: 030 {:07} · Fax: 030 7654321</p>\
             <p><a href=\"mailto:praxis{i}@example.org\">E-Mail</a></p>\
             <table><tr><th>Tag</th><th>Art</th><th>Uhrzeit</th></tr>\
             <tr><td>Montag</td><td>Telefonische Erreichbarkeit</td><td>08:00-08:50</td></tr>\
             <tr><td></td><td>Sprechstunde</td><td>09:00-12:00</td></tr>\
             <tr><td>Donnerstag</td><td>Telefonische Erreichbarkeit</td><td>12:00-12:50</td></tr></table></section>",
            1_000_000 + i
        ));
    }
    out.push_str("</main></body></html>");
    out
}

fn per_second(iterations: usize, mut run: impl FnMut()) -> f64 {
    // Warm up, then measure.
    for _ in 0..iterations / 10 {
        run();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        run();
    }
    iterations as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("ITERATIONS is a number"))
        .unwrap_or(2_000);
    let answer = serde_json::to_vec(&serde_json::json!({
        "arztPraxisDatas": (0..50).map(|n| practice(n, 52.52, 13.40)).collect::<Vec<_>>(),
        "moreResults": true,
    }))
    .expect("serialises");
    let saved = page(50);
    assert_eq!(
        kbv::parse_answer(&answer).expect("parses").records.len(),
        50
    );
    assert_eq!(html::parse_page(&saved).expect("parses").len(), 50);

    let json_bare = per_second(iterations, || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&answer)).expect("JSON"));
    });
    let json_full = per_second(iterations, || {
        let parsed = kbv::parse_answer(black_box(&answer)).expect("parses");
        for raw in &parsed.records {
            black_box(normalise(raw, &Implied::default()).expect("valid"));
        }
    });
    let html_bare = per_second(iterations / 4, || {
        black_box(scraper::Html::parse_document(black_box(&saved)));
    });
    let html_full = per_second(iterations / 4, || {
        for raw in html::parse_page(black_box(&saved)).expect("parses") {
            black_box(normalise(&raw, &Implied::default()).expect("valid"));
        }
    });
    println!("| input (50 practices) | bytes | baseline/s | parsed and normalised/s | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| JSON answer | {} | {json_bare:.0} | {json_full:.0} | {:.2} |",
        answer.len(),
        json_full / json_bare
    );
    println!(
        "| saved HTML page | {} | {html_bare:.0} | {html_full:.0} | {:.2} |",
        saved.len(),
        html_full / html_bare
    );
    println!("\ngoal: >= 1,000 responses/s parsed for a 50-result response");
}
