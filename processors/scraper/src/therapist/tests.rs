//! Tests of `therapist`.

use super::*;

fn raw() -> Raw {
    Raw {
        id: Some("k-1".into()),
        salutation: Some("Frau".into()),
        title: Some("Dr. phil.".into()),
        first_name: Some(" Erika ".into()),
        last_name: Some("Beispiel".into()),
        street: Some("Teststraße".into()),
        house_number: Some("12a".into()),
        postcode: Some("10115".into()),
        city: Some("Berlin".into()),
        phone: Some("030 1234567".into()),
        email: Some("Praxis@Example.org".into()),
        qualifications: vec!["Verhaltenstherapie".into(), "Erwachsene".into()],
        hours: vec![
            (
                "Montag".into(),
                "Telefonische Erreichbarkeit".into(),
                "08:00-08:50".into(),
            ),
            (
                "Di".into(),
                "Psychotherapeutische Sprechstunde".into(),
                "9:00 - 12:00 Uhr".into(),
            ),
        ],
        ..Raw::default()
    }
}

#[test]
fn a_complete_record() {
    let t = normalise(&raw(), &Implied::default()).unwrap();
    assert_eq!(t.details.first_name, "Erika");
    assert_eq!(t.details.gender, "FEMALE");
    assert_eq!(t.details.salutation, "FRAU");
    assert_eq!(t.details.email.as_deref(), Some("praxis@example.org"));
    assert_eq!(t.details.procedures, vec!["BEHAVIOURAL"]);
    assert_eq!(t.details.age_groups, vec!["ADULTS"]);
    assert_eq!(t.details.phone_hours[0].weekday, "MONDAY");
    assert_eq!(t.details.consultation_hours[0].from, "09:00");
    assert!(t.flags.is_empty(), "{:?}", t.flags);
}

#[test]
fn broken_values_are_flagged_not_dropped_silently() {
    let mut broken = raw();
    broken.email = Some("praxis at example".into());
    broken.phone = Some("ruf an".into());
    broken.website = Some("http://".into());
    broken.hours.push((
        "Feiertag".into(),
        "Sprechstunde".into(),
        "10:00-11:00".into(),
    ));
    broken.latitude = Some(95.0);
    broken.longitude = Some(13.0);
    let t = normalise(&broken, &Implied::default()).unwrap();
    assert_eq!(t.details.email, None);
    for flag in [
        "invalid_email=praxis at example",
        "invalid_phone=ruf an",
        "invalid_website=http://",
        "invalid_hours=Feiertag is not a weekday",
        "invalid_coordinates=95,13",
    ] {
        assert!(
            t.flags.iter().any(|f| f == flag),
            "{flag} missing in {:?}",
            t.flags
        );
    }
}

#[test]
fn unusable_records_say_why() {
    let mut nameless = raw();
    nameless.last_name = Some("  ".into());
    assert_eq!(
        normalise(&nameless, &Implied::default()).unwrap_err(),
        "no last name"
    );
    let mut bad_plz = raw();
    bad_plz.postcode = Some("1011".into());
    assert!(
        normalise(&bad_plz, &Implied::default())
            .unwrap_err()
            .contains("\"1011\"")
    );
}

#[test]
fn filters_imply_what_the_record_does_not_say() {
    let mut bare = raw();
    bare.qualifications.clear();
    bare.salutation = None;
    let implied = Implied {
        procedures: vec!["SYSTEMIC"],
        age_groups: vec!["ADULTS"],
        settings: vec!["GROUP"],
    };
    let t = normalise(&bare, &implied).unwrap();
    assert_eq!(t.details.procedures, vec!["SYSTEMIC"]);
    assert_eq!(t.details.settings, vec!["GROUP"]);
    assert_eq!(t.details.gender, "DIVERSE");
    assert_eq!(t.flags, vec!["unknown_gender"]);
}

#[test]
fn validators() {
    for good in [
        "030 1234567",
        "+49 30 123456",
        "(030) 12 34 56",
        "0171/1234567",
    ] {
        assert!(valid_phone(good), "{good}");
    }
    for bad in ["123", "ruf an", "030 12345 Durchwahl 7"] {
        assert!(!valid_phone(bad), "{bad}");
    }
    assert!(valid_email("a.b@praxis-x.de"));
    assert!(!valid_email("a@b"));
    assert!(!valid_email("a b@c.de"));
    assert!(valid_website("www.praxis.de"));
    assert!(valid_website("https://praxis.de/team"));
    assert!(!valid_website("praxis"));
    assert_eq!(slot("Mo", "8:00-8:50").unwrap().from, "08:00");
    assert!(slot("Mo", "12:00-11:00").is_err());
}
