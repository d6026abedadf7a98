//! Saved result pages of the doctor search (HTML): every table whose text
//! holds "Telefonische Erreichbarkeit" or "Sprechstunde" is one practice's
//! hours, and what is written before it (back to the previous such table)
//! is the practice: the name first, then address, phone, links.

use crate::therapist::{Raw, squash};
use ego_tree::NodeId;
use psymatch_runtime::text::valid_postcode;
use scraper::{ElementRef, Html, Node};
use std::collections::HashSet;

/// Descendant elements named `name` (a plain walk: cheaper than selector
/// matching, which this page structure does not need).
fn named<'a>(
    element: ElementRef<'a>,
    name: &'static str,
) -> impl Iterator<Item = ElementRef<'a>> + 'a {
    element
        .descendants()
        .skip(1)
        .filter_map(ElementRef::wrap)
        .filter(move |e| e.value().name() == name)
}

/// The hours tables of a page and every element that contains one.
struct Marks {
    tables: HashSet<NodeId>,
    containers: HashSet<NodeId>,
}

const MARKERS: [&str; 2] = ["Telefonische Erreichbarkeit", "Sprechstunde"];

/// Parses a page into raw records. A page without any hours table is an
/// error (it is not a result page); a table without a name before it yields
/// a record without a name, which normalisation rejects with a reason.
pub fn parse_page(html: &str) -> Result<Vec<Raw>, String> {
    let document = Html::parse_document(html);
    let marked: Vec<ElementRef> = named(document.root_element(), "table")
        .filter(|table| {
            let text: String = table.text().collect();
            MARKERS.iter().any(|m| text.contains(m))
        })
        // Nested tables: the innermost one holds the hours.
        .filter(|table| named(*table, "table").next().is_none())
        .collect();
    if marked.is_empty() {
        return Err(
            "no table with \"Telefonische Erreichbarkeit\" or \"Sprechstunde\": not a saved result page"
                .to_string(),
        );
    }
    let mut marks = Marks {
        tables: marked.iter().map(|t| t.id()).collect(),
        containers: HashSet::new(),
    };
    for table in &marked {
        for ancestor in table.ancestors() {
            if !marks.containers.insert(ancestor.id()) {
                break;
            }
        }
    }
    Ok(marked.iter().map(|table| record(*table, &marks)).collect())
}

/// Lines of text of a node, split at block elements and `<br>`.
fn lines_of(element: ElementRef, out: &mut Vec<Line>) {
    let mut current = String::new();
    let mut links = Vec::new();
    collect(element, &mut current, &mut links, out);
    flush(&mut current, &mut links, out);
}

/// A line of text and the links it holds.
#[derive(Debug, Default)]
struct Line {
    text: String,
    links: Vec<String>,
}

/// Whether `text` starts with `prefix`, ignoring ASCII case.
fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn flush(current: &mut String, links: &mut Vec<String>, out: &mut Vec<Line>) {
    let text = squash(current);
    if !text.is_empty() || !links.is_empty() {
        out.push(Line {
            text,
            links: std::mem::take(links),
        });
    }
    current.clear();
}

fn collect(
    element: ElementRef,
    current: &mut String,
    links: &mut Vec<String>,
    out: &mut Vec<Line>,
) {
    for child in element.children() {
        match child.value() {
            Node::Text(text) => current.push_str(text),
            Node::Element(e) => {
                let name = e.name();
                if matches!(name, "script" | "style") {
                    continue;
                }
                let block = matches!(
                    name,
                    "br" | "p"
                        | "div"
                        | "li"
                        | "h1"
                        | "h2"
                        | "h3"
                        | "h4"
                        | "h5"
                        | "h6"
                        | "tr"
                        | "dt"
                        | "dd"
                        | "address"
                );
                if block {
                    flush(current, links, out);
                }
                if name == "a"
                    && let Some(href) = e.attr("href")
                {
                    links.push(href.trim().to_string());
                }
                if let Some(inner) = ElementRef::wrap(child) {
                    collect(inner, current, links, out);
                }
                if block {
                    flush(current, links, out);
                } else {
                    current.push(' ');
                }
            }
            _ => {}
        }
    }
}

/// What is written before `table`, in document order: its previous
/// siblings, and, while none has text, its ancestors' previous siblings;
/// never reaching back past another hours table.
fn context(table: ElementRef, marks: &Marks) -> Vec<Line> {
    let mut blocks: Vec<ElementRef> = Vec::new();
    let mut node = table;
    'outer: loop {
        for sibling in node.prev_siblings().filter_map(ElementRef::wrap) {
            if marks.tables.contains(&sibling.id()) || marks.containers.contains(&sibling.id()) {
                break 'outer;
            }
            blocks.push(sibling);
        }
        let has_text = blocks
            .iter()
            .any(|b| b.text().any(|t| !t.trim().is_empty()));
        match node.parent().and_then(ElementRef::wrap) {
            Some(parent) if !has_text && parent.value().name() != "body" => node = parent,
            _ => break,
        }
    }
    blocks.reverse();
    let mut lines = Vec::new();
    for block in blocks {
        lines_of(block, &mut lines);
    }
    lines
}

fn record(table: ElementRef, marks: &Marks) -> Raw {
    let mut raw = Raw::default();
    let lines = context(table, marks);
    let mut rest = lines.iter();
    if let Some(first) = rest.next() {
        name(&first.text, &mut raw);
    }
    let lines: Vec<&Line> = rest.collect();
    for (i, line) in lines.iter().enumerate() {
        for link in &line.links {
            if let Some(mail) = link.strip_prefix("mailto:") {
                raw.email.get_or_insert(mail.to_string());
            } else if link.starts_with("http") {
                raw.website.get_or_insert(link.clone());
            } else if let Some(phone) = link.strip_prefix("tel:") {
                raw.phone.get_or_insert(phone.to_string());
            }
        }
        let text = line.text.as_str();
        if let Some((postcode, city)) = postcode_line(text) {
            raw.postcode = Some(postcode);
            raw.city = Some(city);
            if i > 0 && raw.street.is_none() {
                street(&lines[i - 1].text, &mut raw);
            }
            continue;
        }
        let mut labelled = false;
        for part in text.split(['·', '|']) {
            let part = part.trim();
            let is = |prefix: &str| starts_with_ignore_case(part, prefix);
            let value = || part.split_once(':').map(|(_, v)| v.trim().to_string());
            if is("tel") {
                raw.phone = raw.phone.take().or_else(value);
                labelled = true;
            } else if is("fax") {
                raw.fax = raw.fax.take().or_else(value);
                labelled = true;
            } else if is("e-mail") || is("email") {
                raw.email = raw.email.take().or_else(value);
                labelled = true;
            } else if is("sprachen") || is("fremdsprachen") {
                if let Some(list) = value() {
                    raw.languages
                        .extend(list.split(',').map(|l| l.trim().to_string()));
                }
                labelled = true;
            }
        }
        if !labelled && line.links.is_empty() {
            raw.qualifications
                .extend(text.split(['·', '|', ',']).map(|q| q.trim().to_string()));
        }
    }
    raw.hours = hours(table);
    raw
}

/// "10115 Berlin" (also "D-10115 Berlin").
fn postcode_line(text: &str) -> Option<(String, String)> {
    let text = text.trim().trim_start_matches("D-");
    let (postcode, city) = text.split_once(' ')?;
    valid_postcode(postcode).then(|| (postcode.to_string(), city.trim().to_string()))
}

/// "Teststraße 12a" into street and house number.
fn street(text: &str, raw: &mut Raw) {
    let text = text.trim();
    match text.rsplit_once(' ') {
        Some((street, number)) if number.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            raw.street = Some(street.to_string());
            raw.house_number = Some(number.to_string());
        }
        _ => raw.street = Some(text.to_string()),
    }
}

/// "Frau Dr. phil. Erika Beispiel": salutation, title, first and last name.
fn name(text: &str, raw: &mut Raw) {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if let Some(first) = words.first()
        && matches!(*first, "Frau" | "Herr")
    {
        raw.salutation = Some(first.to_string());
        words.remove(0);
    }
    let titles: Vec<&str> = words
        .iter()
        .take_while(|w| w.ends_with('.') || w.starts_with("Dipl") || w.contains(".-"))
        .copied()
        .collect();
    let names = &words[titles.len()..];
    if !titles.is_empty() {
        raw.title = Some(titles.join(" "));
    }
    if let Some((last, first)) = names.split_last() {
        raw.last_name = Some(last.to_string());
        raw.first_name = Some(first.join(" "));
    }
}

/// The hours of a table, either as rows "day | kind | times" or as columns
/// headed by the kind with a day per row. A row without a day continues the
/// previous day.
fn hours(table: ElementRef) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut day = String::new();
    for row in named(table, "tr") {
        let cells = || {
            row.children()
                .filter_map(ElementRef::wrap)
                .filter(|c| matches!(c.value().name(), "td" | "th"))
        };
        let texts: Vec<String> = cells()
            .map(|c| squash(&c.text().collect::<Vec<_>>().join(" ")))
            .collect();
        let is_header = cells().all(|c| c.value().name() == "th");
        if is_header {
            if texts.iter().any(|t| MARKERS.iter().any(|m| t.contains(m))) {
                columns = texts;
            }
            continue;
        }
        let Some(first) = texts.first() else {
            continue;
        };
        if !first.is_empty() {
            day = first.clone();
        }
        let kind_cell = texts
            .iter()
            .skip(1)
            .find(|t| MARKERS.iter().any(|m| t.contains(m)) || t.contains("Telefon"));
        match kind_cell {
            Some(kind) => {
                for cell in texts.iter().skip(1).filter(|t| *t != kind) {
                    for time in times(cell) {
                        out.push((day.clone(), kind.clone(), time));
                    }
                }
            }
            None => {
                for (index, cell) in texts.iter().enumerate().skip(1) {
                    let kind = columns.get(index).cloned().unwrap_or_default();
                    for time in times(cell) {
                        out.push((day.clone(), kind.clone(), time));
                    }
                }
            }
        }
    }
    out
}

/// "08:00-08:50, 13:00-14:00" into ranges.
fn times(cell: &str) -> Vec<String> {
    cell.split([',', ';', '/'])
        .flat_map(|part| part.split(" und "))
        .map(str::trim)
        .filter(|t| t.contains('-') || t.contains('–'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_with_rows_of_day_kind_and_time() {
        let page = r#"<html><body><div class="result">
            <h3>Frau Dr. phil. Erika Beispiel</h3>
            <p>Psychologische Psychotherapeutin · Verhaltenstherapie</p>
            <p>Teststraße 12a<br>10115 Berlin</p>
            <p>Tel.: 030 1234567 · Fax: 030 1234568</p>
            <p><a href="mailto:praxis@example.org">E-Mail</a> <a href="https://praxis.example.org">Website</a></p>
            <table><tr><th>Tag</th><th>Art</th><th>Zeit</th></tr>
              <tr><td>Montag</td><td>Telefonische Erreichbarkeit</td><td>08:00-08:50</td></tr>
              <tr><td></td><td>Sprechstunde</td><td>09:00-12:00, 14:00-15:00</td></tr>
            </table></div></body></html>"#;
        let records = parse_page(page).unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r.salutation.as_deref(), Some("Frau"));
        assert_eq!(r.title.as_deref(), Some("Dr. phil."));
        assert_eq!(r.first_name.as_deref(), Some("Erika"));
        assert_eq!(r.last_name.as_deref(), Some("Beispiel"));
        assert_eq!(r.street.as_deref(), Some("Teststraße"));
        assert_eq!(r.house_number.as_deref(), Some("12a"));
        assert_eq!(r.postcode.as_deref(), Some("10115"));
        assert_eq!(r.phone.as_deref(), Some("030 1234567"));
        assert_eq!(r.fax.as_deref(), Some("030 1234568"));
        assert_eq!(r.email.as_deref(), Some("praxis@example.org"));
        assert_eq!(r.website.as_deref(), Some("https://praxis.example.org"));
        assert!(r.qualifications.iter().any(|q| q == "Verhaltenstherapie"));
        assert_eq!(r.hours.len(), 3);
        assert_eq!(
            r.hours[1],
            ("Montag".into(), "Sprechstunde".into(), "09:00-12:00".into())
        );
    }

    #[test]
    fn pages_without_hours_tables_are_errors() {
        let error = parse_page("<html><body><p>Keine Treffer</p></body></html>").unwrap_err();
        assert!(error.contains("not a saved result page"));
        assert!(parse_page("").is_err());
    }
}
