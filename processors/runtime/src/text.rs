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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_and_squashing() {
        assert_eq!(fold("Müller-Straße 3"), "muellerstrasse3");
        assert_eq!(squash("  Dr.\tphil.\n Erika "), "Dr. phil. Erika");
    }
}
