//! OSRM's `/route` and `/table` answers.

use crate::Position;
use serde::Deserialize;

/// A routed trip: `None` duration when the router found no route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trip {
    /// Seconds, or `None` when unreachable.
    pub duration: Option<f64>,
    /// Metres (0 when unreachable).
    pub distance: f64,
}

fn coordinate(position: Position) -> String {
    // OSRM wants longitude first; 6 decimals is about 0.1 m.
    format!("{:.6},{:.6}", position.longitude, position.latitude)
}

/// The `/route` path from `from` to `to` with `profile`.
pub fn route_path(profile: &str, from: Position, to: Position) -> String {
    format!(
        "/route/v1/{profile}/{};{}?overview=false&alternatives=false&steps=false",
        coordinate(from),
        coordinate(to)
    )
}

/// The `/table` path from `from` (source 0) to every destination.
pub fn table_path(profile: &str, from: Position, to: &[Position]) -> String {
    let mut coordinates = coordinate(from);
    for position in to {
        coordinates.push(';');
        coordinates.push_str(&coordinate(*position));
    }
    let destinations: Vec<String> = (1..=to.len()).map(|i| i.to_string()).collect();
    format!(
        "/table/v1/{profile}/{coordinates}?sources=0&destinations={}&annotations=duration,distance",
        destinations.join(";")
    )
}

#[derive(Deserialize)]
struct RouteAnswer {
    code: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    routes: Vec<Route>,
}

#[derive(Deserialize)]
struct Route {
    duration: f64,
    distance: f64,
}

#[derive(Deserialize)]
struct TableAnswer {
    code: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    durations: Option<Vec<Vec<Option<f64>>>>,
    #[serde(default)]
    distances: Option<Vec<Vec<Option<f64>>>>,
}

fn check_code(code: &str, message: Option<&str>) -> Result<bool, String> {
    match code {
        "Ok" => Ok(true),
        // The positions are fine, there is no way between them.
        "NoRoute" | "NoSegment" => Ok(false),
        other => Err(format!(
            "OSRM answered {other}: {}",
            message.unwrap_or("no message")
        )),
    }
}

fn finite(value: f64, what: &str) -> Result<f64, String> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("{what} {value} is not a non-negative number"))
    }
}

/// Parses a `/route` answer.
pub fn parse_route(body: &[u8]) -> Result<Trip, String> {
    let answer: RouteAnswer =
        serde_json::from_slice(body).map_err(|e| format!("not an OSRM route answer: {e}"))?;
    if !check_code(&answer.code, answer.message.as_deref())? {
        return Ok(Trip {
            duration: None,
            distance: 0.0,
        });
    }
    let route = answer
        .routes
        .first()
        .ok_or("OSRM answered Ok without a route")?;
    Ok(Trip {
        duration: Some(finite(route.duration, "duration")?),
        distance: finite(route.distance, "distance")?,
    })
}

/// One destination of a table: duration (None: unreachable) and distance
/// (None: the router did not say).
pub type Cell = (Option<f64>, Option<f64>);

/// Parses a `/table` answer for one source and `expected` destinations.
/// Without distances (older OSRM), distance is `None` for the caller to
/// estimate.
pub fn parse_table(body: &[u8], expected: usize) -> Result<Vec<Cell>, String> {
    let answer: TableAnswer =
        serde_json::from_slice(body).map_err(|e| format!("not an OSRM table answer: {e}"))?;
    if !check_code(&answer.code, answer.message.as_deref())? {
        return Ok(vec![(None, Some(0.0)); expected]);
    }
    let durations = answer
        .durations
        .and_then(|rows| rows.into_iter().next())
        .ok_or("OSRM answered Ok without durations")?;
    if durations.len() != expected {
        return Err(format!(
            "OSRM answered {} durations for {expected} destinations",
            durations.len()
        ));
    }
    let distances = answer.distances.and_then(|rows| rows.into_iter().next());
    if let Some(distances) = &distances
        && distances.len() != expected
    {
        return Err(format!(
            "OSRM answered {} distances for {expected} destinations",
            distances.len()
        ));
    }
    durations
        .into_iter()
        .enumerate()
        .map(|(i, duration)| {
            let duration = duration.map(|d| finite(d, "duration")).transpose()?;
            let distance = distances
                .as_ref()
                .and_then(|row| row[i])
                .map(|d| finite(d, "distance"))
                .transpose()?;
            Ok((duration, distance))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route() {
        let body = br#"{"code":"Ok","routes":[{"duration":1234.5,"distance":9876.1,"legs":[],"weight":1234.5}],"waypoints":[{"location":[13.4,52.5]},{"location":[13.5,52.6]}]}"#;
        assert_eq!(
            parse_route(body).unwrap(),
            Trip {
                duration: Some(1234.5),
                distance: 9876.1
            }
        );
        let none = br#"{"code":"NoRoute","message":"Impossible route between points"}"#;
        assert_eq!(parse_route(none).unwrap().duration, None);
    }

    #[test]
    fn a_table_with_an_unreachable_destination() {
        let body = br#"{"code":"Ok","durations":[[600.0,null,90.5]],"distances":[[5000.0,null,800.0]],"sources":[{}],"destinations":[{},{},{}]}"#;
        let rows = parse_table(body, 3).unwrap();
        assert_eq!(rows[0], (Some(600.0), Some(5000.0)));
        assert_eq!(rows[1], (None, None));
        assert_eq!(rows[2], (Some(90.5), Some(800.0)));
        let durations_only = br#"{"code":"Ok","durations":[[1.0]]}"#;
        assert_eq!(
            parse_table(durations_only, 1).unwrap()[0],
            (Some(1.0), None)
        );
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        for (body, expected, error) in [
            (&b"Bad Gateway"[..], 1, "not an OSRM table answer"),
            (
                br#"{"code":"InvalidQuery","message":"Query string malformed"}"#,
                1,
                "InvalidQuery: Query string malformed",
            ),
            (br#"{"code":"Ok"}"#, 1, "without durations"),
            (
                br#"{"code":"Ok","durations":[[1.0,2.0]]}"#,
                1,
                "2 durations for 1",
            ),
            (br#"{"code":"Ok","durations":[[-1.0]]}"#, 1, "non-negative"),
        ] {
            let message = parse_table(body, expected).unwrap_err();
            assert!(message.contains(error), "{message}");
        }
        assert!(
            parse_route(br#"{"code":"Ok","routes":[]}"#)
                .unwrap_err()
                .contains("without a route")
        );
    }

    #[test]
    fn paths_put_longitude_first() {
        let a = Position::new(52.5, 13.4);
        let b = Position::new(48.1, 11.6);
        assert_eq!(
            route_path("driving", a, b),
            "/route/v1/driving/13.400000,52.500000;11.600000,48.100000?overview=false&alternatives=false&steps=false"
        );
        let table = table_path("foot", a, &[b, b]);
        assert!(table.starts_with("/table/v1/foot/13.400000,52.500000;11.600000,48.100000;11.600000,48.100000?sources=0&destinations=1;2&"));
    }
}
