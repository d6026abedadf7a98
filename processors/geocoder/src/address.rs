//! Addresses as requested: validation, the text Nominatim is asked, and the
//! normalised cache key.

use psymatch_runtime::text::{fold, valid_postcode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A postal address in Germany (the `psymatch.Address` record).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Address {
    /// Street name.
    pub street: String,
    /// House number with suffix.
    #[serde(default)]
    pub house_number: Option<String>,
    /// Postleitzahl.
    pub postcode: String,
    /// City or municipality.
    pub city: String,
}

impl Address {
    /// Checks what a geocoder can check: a five-digit postcode and a street
    /// or city to look for. The message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let postcode = self.postcode.trim();
        if !valid_postcode(postcode) {
            return Err(
                "postcode is not five digits (German postcodes are 01001-99998)".to_string(),
            );
        }
        if self.street.trim().is_empty() && self.city.trim().is_empty() {
            return Err("street and city are both empty".to_string());
        }
        Ok(())
    }

    /// The free-text query for Nominatim: "Street 12a, 12345 City".
    pub fn query(&self) -> String {
        let street = match self.house_number.as_deref().map(str::trim) {
            Some(number) if !number.is_empty() => format!("{} {number}", self.street.trim()),
            _ => self.street.trim().to_string(),
        };
        format!("{street}, {} {}", self.postcode.trim(), self.city.trim())
    }

    /// The normalised form the cache is keyed by. Trivially different
    /// spellings agree: case, umlauts and ß, "Straße"/"Strasse"/"Str.",
    /// spaces, hyphens and dots. The city is left out: the postcode already
    /// says where, and city names are the most variously written part
    /// ("Frankfurt am Main", "Frankfurt a. M.").
    pub fn normalised(&self) -> String {
        let number = self.house_number.as_deref().unwrap_or("");
        format!(
            "{}|{}|{}",
            fold(&self.street).replace("strasse", "str"),
            fold(number),
            self.postcode.trim()
        )
    }

    /// SHA-256 of [`Address::normalised`]: the cache keeps no address text.
    pub fn key(&self) -> [u8; 32] {
        Sha256::digest(self.normalised().as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(street: &str, number: Option<&str>, postcode: &str, city: &str) -> Address {
        Address {
            street: street.into(),
            house_number: number.map(Into::into),
            postcode: postcode.into(),
            city: city.into(),
        }
    }

    #[test]
    fn trivially_different_spellings_share_a_key() {
        let base = address("Musterstraße", Some("12a"), "10115", "Berlin");
        for variant in [
            address("Musterstrasse", Some("12 a"), "10115", "Berlin"),
            address("musterstr.", Some("12A"), " 10115", "BERLIN"),
            address("Muster-Straße", Some("12a"), "10115", "Berlin-Mitte"),
        ] {
            assert_eq!(base.key(), variant.key(), "{variant:?}");
        }
    }

    #[test]
    fn different_addresses_have_different_keys() {
        let base = address("Musterstraße", Some("12a"), "10115", "Berlin");
        for other in [
            address("Musterstraße", Some("12b"), "10115", "Berlin"),
            address("Musterstraße", Some("12a"), "10117", "Berlin"),
            address("Müllerstraße", Some("12a"), "10115", "Berlin"),
            address("Musterstraße", None, "10115", "Berlin"),
        ] {
            assert_ne!(base.key(), other.key(), "{other:?}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = address("Weg", None, "1011", "Berlin");
        let problem = bad.validate().unwrap_err();
        assert!(problem.contains("postcode is not five digits") && !problem.contains("1011"));
        let letters = address("Weg", None, "1011A", "Berlin");
        assert!(letters.validate().is_err());
        let empty = address(" ", None, "10115", "");
        assert!(empty.validate().unwrap_err().contains("empty"));
        assert!(address("Weg", None, "10115", "Berlin").validate().is_ok());
    }

    #[test]
    fn the_query_reads_like_an_address() {
        let a = address("Musterstraße", Some("12a"), "10115", "Berlin");
        assert_eq!(a.query(), "Musterstraße 12a, 10115 Berlin");
        let b = address("Musterstraße", None, "10115", "Berlin");
        assert_eq!(b.query(), "Musterstraße, 10115 Berlin");
    }
}
