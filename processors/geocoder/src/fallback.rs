//! What answers when the upstream services cannot: postcode centroids
//! (the bundled dataset of [`psymatch_geo::postcodes`]), and travel
//! estimated from the straight-line distance.

use crate::{Mode, Position};
use psymatch_geo::great_circle_m;

/// How far the way is longer than the straight line, and how fast one
/// travels door to door, per mode. Documented in docs/processors/geocoder.md:
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
    fn estimates_are_slower_for_slower_modes() {
        let a = Position::new(52.52, 13.40);
        let b = Position::new(52.50, 13.45);
        let car = straight_line(Mode::Car, a, b);
        let walk = straight_line(Mode::Walking, a, b);
        assert!(walk.1 > car.1 * 5.0);
        assert!(car.0 > great_circle_m(a, b));
    }
}
