//! The fixture files in the real formats (an API answer with
//! `arztPraxisDatas` and `moreResults`, a saved result page) parse into the
//! expected therapists; malformed and partial inputs give clear errors.

use psymatch_scraper::therapist::{Implied, Therapist, normalise};
use psymatch_scraper::{html, kbv};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn normalised(records: &[psymatch_scraper::therapist::Raw]) -> Vec<Result<Therapist, String>> {
    records
        .iter()
        .map(|r| normalise(r, &Implied::default()))
        .collect()
}

#[test]
fn the_api_answer_gives_its_therapists_with_flags_and_reasons() {
    let answer = kbv::parse_answer(&fixture("api-answer.json")).unwrap();
    assert!(!answer.more_results);
    let results = normalised(&answer.records);
    assert_eq!(results.len(), 5);

    let erika = results[0].as_ref().unwrap();
    let d = &erika.details;
    assert_eq!(erika.source_id.as_deref(), Some("fx-0001"));
    assert_eq!(
        (d.salutation, d.title.as_deref(), d.gender),
        ("FRAU", Some("Dr. phil."), "FEMALE")
    );
    assert_eq!(
        (d.first_name.as_str(), d.last_name.as_str()),
        ("Erika", "Beispiel")
    );
    assert_eq!(d.address.house_number.as_deref(), Some("12a"));
    assert_eq!(d.coordinates.unwrap().latitude, 52.5321);
    assert_eq!(d.email.as_deref(), Some("praxis.beispiel@example.org"));
    assert_eq!(d.languages, vec!["Englisch", "Französisch"]);
    assert_eq!(d.procedures, vec!["BEHAVIOURAL"]);
    assert_eq!(d.age_groups, vec!["ADULTS"]);
    assert_eq!(d.settings, vec!["GROUP"]);
    let phone: Vec<(&str, &str, &str)> = d
        .phone_hours
        .iter()
        .map(|s| (s.weekday, s.from.as_str(), s.to.as_str()))
        .collect();
    assert_eq!(
        phone,
        vec![
            ("MONDAY", "08:00", "08:50"),
            ("MONDAY", "13:00", "13:25"),
            ("THURSDAY", "12:00", "12:50")
        ]
    );
    assert_eq!(d.consultation_hours.len(), 1);
    assert!(erika.flags.is_empty(), "{:?}", erika.flags);

    let max = results[1].as_ref().unwrap();
    assert_eq!(max.details.phone, None);
    assert_eq!(max.details.email, None);
    assert_eq!(max.details.age_groups, vec!["CHILDREN_AND_ADOLESCENTS"]);
    assert_eq!(max.details.procedures, vec!["PSYCHODYNAMIC"]);
    for flag in [
        "invalid_phone=bitte per Mail",
        "invalid_email=muster(at)example",
        "invalid_hours=Feiertag is not a weekday",
    ] {
        assert!(
            max.flags.iter().any(|f| f == flag),
            "{flag} not in {:?}",
            max.flags
        );
    }

    let alex = results[2].as_ref().unwrap();
    assert_eq!(alex.details.gender, "DIVERSE");
    assert!(alex.flags.contains(&"unknown_gender".to_string()));
    assert_eq!(alex.details.coordinates, None);
    assert_eq!(alex.details.procedures, vec!["ANALYTIC", "SYSTEMIC"]);

    assert_eq!(results[3].as_ref().unwrap_err(), "no last name");
    assert!(
        results[4]
            .as_ref()
            .unwrap_err()
            .contains("\"1011\" is not five digits")
    );
}

#[test]
fn the_saved_page_gives_the_same_practices() {
    let page = String::from_utf8(fixture("result-page.html")).unwrap();
    let records = html::parse_page(&page).unwrap();
    assert_eq!(records.len(), 3);
    let results = normalised(&records);

    let erika = results[0].as_ref().unwrap();
    let d = &erika.details;
    assert_eq!(erika.source_id, None);
    assert_eq!(d.title.as_deref(), Some("Dipl.-Psych."));
    assert_eq!(
        (d.first_name.as_str(), d.last_name.as_str()),
        ("Erika", "Beispiel")
    );
    assert_eq!(d.address.street, "Teststraße");
    assert_eq!(d.address.postcode, "10115");
    assert_eq!(d.phone.as_deref(), Some("030 1234567"));
    assert_eq!(d.fax.as_deref(), Some("030 1234568"));
    assert_eq!(
        d.website.as_deref(),
        Some("https://www.praxis-beispiel.example.org")
    );
    assert_eq!(d.languages, vec!["Englisch", "Französisch"]);
    assert_eq!(d.procedures, vec!["BEHAVIOURAL"]);
    assert_eq!(d.phone_hours.len(), 3);
    assert_eq!(d.consultation_hours[0].from, "09:00");
    // The same practice from the API and the page has the same identity key.
    let api = kbv::parse_answer(&fixture("api-answer.json")).unwrap();
    let from_api = normalise(&api.records[0], &Implied::default()).unwrap();
    assert_eq!(erika.name_key(), from_api.name_key());

    let max = results[1].as_ref().unwrap();
    assert_eq!(max.details.salutation, "HERR");
    assert_eq!(max.details.address.house_number.as_deref(), Some("3"));
    assert_eq!(max.details.age_groups, vec!["CHILDREN_AND_ADOLESCENTS"]);
    let phone: Vec<(&str, &str)> = max
        .details
        .phone_hours
        .iter()
        .map(|s| (s.weekday, s.from.as_str()))
        .collect();
    assert_eq!(phone, vec![("TUESDAY", "10:00"), ("FRIDAY", "09:00")]);
    assert_eq!(max.details.consultation_hours.len(), 1);

    // A table with no name before it: a record a person can reason about.
    assert_eq!(results[2].as_ref().unwrap_err(), "no last name");
}

#[test]
fn malformed_and_partial_inputs_are_clear_errors() {
    let partial = kbv::parse_answer(&fixture("partial-answer.json")).unwrap_err();
    assert!(partial.contains("not a KBV search answer"), "{partial}");
    assert!(partial.contains("EOF"), "{partial}");
    let page = html::parse_page("<html><body><table><tr><td>leer</td></tr></table>").unwrap_err();
    assert!(page.contains("not a saved result page"));
    // Arbitrary bytes never panic.
    for bytes in [
        &b"\xff\xfe\x00"[..],
        b"[]",
        b"null",
        b"{\"arztPraxisDatas\": [null, [], \"x\"]}",
    ] {
        let _ = kbv::parse_answer(bytes);
        let _ = html::parse_page(&String::from_utf8_lossy(bytes));
    }
}
