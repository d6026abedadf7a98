//! Text normalisation shared by the processors.

/// Lower case, German letters transliterated (ä ae, ö oe, ü ue, ß ss),
/// only letters and digits kept: spellings that differ in case, umlauts,
/// spaces and punctuation fold to the same key.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        match c {
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            c if c.is_alphanumeric() => out.push(c),
            _ => {}
        }
    }
    out
}

/// The words of `text` joined by single spaces, in one allocation.
pub fn squash(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// An email address as people write one: a local part, one @, a domain
/// with a dot, no spaces. (Sending checks it fully.)
pub fn valid_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !value.chars().any(char::is_whitespace)
}

/// A German postcode (Postleitzahl): five digits.
pub fn valid_postcode(value: &str) -> bool {
    value.len() == 5 && value.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_and_squashing() {
        assert_eq!(fold("Müller-Straße 3"), "muellerstrasse3");
        assert_eq!(squash("  Dr.\tphil.\n Erika "), "Dr. phil. Erika");
        assert!(valid_email("a.b@praxis-x.de"));
        for bad in ["a@b", "a b@c.de", "a@b@c.de", "@c.de", "a@.de"] {
            assert!(!valid_email(bad), "{bad}");
        }
        assert!(valid_postcode("01067") && !valid_postcode("1011") && !valid_postcode("1011A"));
    }
}
