//! Nominatim's `/search` answer: an array of places whose `lat` and `lon`
//! are strings.

use crate::{Position, Precision};
use serde::Deserialize;

/// A place found for an address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    /// Where.
    pub position: Position,
    /// How exact.
    pub precision: Precision,
}

#[derive(Deserialize)]
struct Place {
    lat: String,
    lon: String,
    #[serde(default)]
    place_rank: Option<u32>,
    #[serde(default)]
    addresstype: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// The query string of a search for `query` in Germany.
pub fn search_path(query: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("q", query),
            ("format", "json"),
            ("countrycodes", "de"),
            ("limit", "1"),
            ("addressdetails", "1"),
        ])
        .finish();
    format!("/search?{query}")
}

/// Parses a `/search` answer: `Ok(None)` when nothing was found, an error
/// saying what is wrong with a body that is not such an answer.
pub fn parse_search(body: &[u8]) -> Result<Option<Found>, String> {
    let places: Vec<Place> =
        serde_json::from_slice(body).map_err(|e| format!("not a Nominatim search result: {e}"))?;
    let Some(place) = places.into_iter().next() else {
        return Ok(None);
    };
    let latitude: f64 = place
        .lat
        .trim()
        .parse()
        .map_err(|_| format!("lat {:?} is not a number", place.lat))?;
    let longitude: f64 = place
        .lon
        .trim()
        .parse()
        .map_err(|_| format!("lon {:?} is not a number", place.lon))?;
    if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
        return Err(format!("position {latitude},{longitude} is not on Earth"));
    }
    Ok(Some(Found {
        position: Position {
            latitude,
            longitude,
        },
        precision: precision(
            place.place_rank,
            place.addresstype.as_deref().or(place.kind.as_deref()),
        ),
    }))
}

/// How exact a place is, from its search rank (30 a building, 26-27 a
/// street, 21-25 a postcode area or suburb) or else its address type.
fn precision(rank: Option<u32>, kind: Option<&str>) -> Precision {
    match (rank, kind) {
        (Some(28..), _) => Precision::Address,
        (Some(26..=27), _) => Precision::Street,
        (_, Some("postcode")) => Precision::Postcode,
        (Some(21..=25), _) => Precision::Postcode,
        (Some(_), _) => Precision::City,
        (None, Some("house" | "building" | "amenity" | "office" | "shop")) => Precision::Address,
        (None, Some("road" | "street")) => Precision::Street,
        (None, _) => Precision::City,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_house_with_string_coordinates() {
        let body = br#"[{"place_id":123,"licence":"Data (c) OpenStreetMap contributors","lat":"52.5319","lon":"13.3849","display_name":"12, Musterstrasse, Berlin","class":"place","type":"house","place_rank":30,"addresstype":"place","address":{"postcode":"10115","city":"Berlin"}}]"#;
        let found = parse_search(body).unwrap().unwrap();
        assert_eq!(found.position.latitude, 52.5319);
        assert_eq!(found.position.longitude, 13.3849);
        assert_eq!(found.precision, Precision::Address);
    }

    #[test]
    fn ranks_give_the_precision() {
        let street = br#"[{"lat":"1","lon":"2","place_rank":26,"addresstype":"road"}]"#;
        assert_eq!(
            parse_search(street).unwrap().unwrap().precision,
            Precision::Street
        );
        let postcode = br#"[{"lat":"1","lon":"2","place_rank":21,"addresstype":"postcode"}]"#;
        assert_eq!(
            parse_search(postcode).unwrap().unwrap().precision,
            Precision::Postcode
        );
        let city = br#"[{"lat":"1","lon":"2","place_rank":16,"addresstype":"city"}]"#;
        assert_eq!(
            parse_search(city).unwrap().unwrap().precision,
            Precision::City
        );
        let unranked = br#"[{"lat":"1","lon":"2","type":"house"}]"#;
        assert_eq!(
            parse_search(unranked).unwrap().unwrap().precision,
            Precision::Address
        );
    }

    #[test]
    fn nothing_found_is_not_an_error() {
        assert_eq!(parse_search(b"[]").unwrap(), None);
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        for (body, expected) in [
            (&b"<html>busy</html>"[..], "not a Nominatim search result"),
            (br#"{"error":"x"}"#, "not a Nominatim search result"),
            (
                br#"[{"lat":52.5,"lon":"13.4"}]"#,
                "not a Nominatim search result",
            ),
            (br#"[{"lat":"north","lon":"13.4"}]"#, "lat \"north\""),
            (br#"[{"lat":"95","lon":"13.4"}]"#, "not on Earth"),
        ] {
            let error = parse_search(body).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn the_query_asks_for_germany_only() {
        let path = search_path("Musterstraße 1, 10115 Berlin");
        assert!(path.starts_with("/search?q=Musterstra%C3%9Fe+1%2C+10115+Berlin&"));
        assert!(path.contains("countrycodes=de"));
        assert!(path.contains("format=json"));
        assert!(path.contains("limit=1"));
    }
}
