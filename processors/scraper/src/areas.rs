//! The areas a run covers: a circle's centre from its coordinates or its
//! postcode, a region covered by the 10 km grid, the nine smaller circles
//! an area splits into when the answer is full.

use crate::{Area, Coordinates, FilterSymbols, MAX_RADIUS_KM};
use psymatch_geo::{Position, grid};

/// The centre of an area: its coordinates, or its postcode's centroid.
pub(crate) fn centre(area: &Area) -> Result<(f64, f64), String> {
    if !(1..=MAX_RADIUS_KM).contains(&area.radius_km) {
        return Err(format!(
            "radius {} km is outside 1..{MAX_RADIUS_KM} km",
            area.radius_km
        ));
    }
    match (&area.centre, &area.postcode) {
        (Some(c), _) => {
            if Position::new(c.latitude, c.longitude).in_germany() {
                Ok((c.latitude, c.longitude))
            } else {
                Err(format!(
                    "centre {},{} is not in Germany",
                    c.latitude, c.longitude
                ))
            }
        }
        (None, Some(postcode)) => psymatch_geo::postcodes()
            .get(postcode.trim())
            .map(|p| (p.latitude, p.longitude))
            .ok_or_else(|| format!("postcode {postcode:?} is not a known German postcode")),
        (None, None) => Err("an area needs a postcode or a centre".to_string()),
    }
}

/// Areas covering a region given by name: `germany` (or `deutschland`,
/// `de`), or a postcode prefix (`1`, `10`, `80331`). The postcode centroids
/// inside it are put on a grid of 10 km squares; every square holding one
/// becomes an area of 8 km radius around its centre (the square's
/// half-diagonal is 7.07 km), so neighbouring areas overlap and every
/// centroid lies inside its square's area.
pub fn region_areas(region: &str) -> Result<Vec<(f64, f64, i32)>, String> {
    let region = region.trim().to_lowercase();
    let prefix = match region.as_str() {
        "germany" | "deutschland" | "de" => "",
        digits
            if !digits.is_empty()
                && digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            digits
        }
        _ => {
            return Err(format!(
                "region {region:?} has no areas: give areas, or the region germany, or a postcode prefix"
            ));
        }
    };
    let mut cells: Vec<grid::Cell> = psymatch_geo::postcodes()
        .iter()
        .filter(|(postcode, _)| postcode.starts_with(prefix))
        .map(|(_, p)| grid::cell(*p))
        .collect();
    if cells.is_empty() {
        return Err(format!("no postcode starts with {prefix:?}"));
    }
    cells.sort_unstable();
    cells.dedup();
    let radius = (grid::CELL_KM * std::f64::consts::FRAC_1_SQRT_2).ceil() as i32;
    Ok(cells
        .into_iter()
        .map(|square| {
            let centre = grid::centre(square);
            (centre.latitude, centre.longitude, radius)
        })
        .collect())
}

/// The key of an area in the membership table: centre, radius and filters.
pub(crate) fn area_key(
    latitude: f64,
    longitude: f64,
    radius_km: i32,
    filters: &FilterSymbols,
) -> String {
    format!(
        "{latitude:.4},{longitude:.4},{radius_km}|{}|{}|{}",
        filters.procedures.join("+"),
        filters.age_groups.join("+"),
        filters.settings.join("+")
    )
}

/// Nine circles covering a circle: a 3 x 3 grid of cells over its
/// bounding square, each cell covered by a circle of 0.471 radii (half the
/// cell's diagonal), rounded up to whole kilometres as the search takes
/// them.
pub(crate) fn split(latitude: f64, longitude: f64, radius_km: i32) -> Vec<Area> {
    let step = 2.0 * radius_km as f64 / 3.0;
    let radius = sub_radius(radius_km);
    let mut areas = Vec::with_capacity(9);
    for row in [-1.0, 0.0, 1.0] {
        for column in [-1.0, 0.0, 1.0] {
            areas.push(Area {
                postcode: None,
                centre: Some(Coordinates {
                    latitude: latitude + row * step / 111.2,
                    longitude: longitude + column * step / (111.2 * latitude.to_radians().cos()),
                }),
                radius_km: radius,
            });
        }
    }
    areas
}

/// The radius of the circles an area of `radius_km` is split into.
pub(crate) fn sub_radius(radius_km: i32) -> i32 {
    (radius_km as f64 * 0.4714).ceil() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_smaller_circles_cover_the_area() {
        let parts = split(52.5, 13.4, 9);
        assert_eq!(parts.len(), 9);
        assert!(parts.iter().all(|p| p.radius_km == 5));
        // Points all over the parent circle lie in one of the parts.
        for i in 0..72 {
            let angle = i as f64 * 5.0f64.to_radians();
            for distance in [0.0, 4.5, 8.99] {
                let point = (
                    52.5 + distance * angle.sin() / 111.2,
                    13.4 + distance * angle.cos() / (111.2 * 52.5f64.to_radians().cos()),
                );
                let covered = parts.iter().any(|p| {
                    let c = p.centre.as_ref().unwrap();
                    let dy = (c.latitude - point.0) * 111.2;
                    let dx = (c.longitude - point.1) * 111.2 * 52.5f64.to_radians().cos();
                    (dx * dx + dy * dy).sqrt() <= p.radius_km as f64
                });
                assert!(covered, "{distance} km at {i}");
            }
        }
        assert!(sub_radius(2) < 2);
        assert_eq!(sub_radius(1), 1, "1 km cannot be split");
    }

    #[test]
    fn regions_are_covered_by_overlapping_areas() {
        let germany = region_areas("Germany").unwrap();
        assert!(
            (2_000..6_000).contains(&germany.len()),
            "{} areas",
            germany.len()
        );
        assert!(germany.iter().all(|a| a.2 == 8));
        // Every postcode centroid lies inside an area.
        for (postcode, p) in psymatch_geo::postcodes() {
            let inside = germany
                .iter()
                .any(|(lat, lon, r)| grid::plane_km(Position::new(*lat, *lon), *p) <= *r as f64);
            assert!(inside, "{postcode} is not covered");
        }
        let berlin = region_areas("10").unwrap();
        assert!((1..30).contains(&berlin.len()), "{} areas", berlin.len());
        assert!(
            region_areas("Atlantis")
                .unwrap_err()
                .contains("postcode prefix")
        );
        assert!(region_areas("00").unwrap_err().contains("no postcode"));
    }

    #[test]
    fn areas_are_checked() {
        let area = |postcode: Option<&str>, radius_km| Area {
            postcode: postcode.map(Into::into),
            centre: None,
            radius_km,
        };
        assert!(centre(&area(Some("10115"), 5)).is_ok());
        assert!(
            centre(&area(Some("00000"), 5))
                .unwrap_err()
                .contains("not a known")
        );
        assert!(
            centre(&area(Some("10115"), 80))
                .unwrap_err()
                .contains("radius")
        );
        assert!(
            centre(&area(None, 5))
                .unwrap_err()
                .contains("postcode or a centre")
        );
    }
}
