//! The contact log as a PDF letter a patient hands to the insurer with a
//! claim for reimbursement of private therapy (Kostenerstattung, SGB V
//! section 13(3)): the patient's name and date of birth, the period, every
//! contact as a table row, page numbers. In German, the insurer's language.
//!
//! Written with `pdf-writer` (the typst project's PDF writer): it has four
//! small dependencies and no font or image stack, and the letter needs only
//! the PDF base fonts, which every reader ships, so nothing is embedded.
//! The table is set in Courier, whose every glyph is 0.6 em wide, so
//! columns and line breaks are exact without font metrics; a cell too long
//! for its column wraps onto more lines, never cut, so every word of every
//! row is in the document.

use chrono::{DateTime, NaiveDate};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
use serde_json::Value;

/// A4 landscape, in points.
const WIDTH: f32 = 842.0;
const HEIGHT: f32 = 595.0;
const MARGIN: f32 = 48.0;
/// The table's font size and line height.
const TABLE_SIZE: f32 = 8.0;
const LINE: f32 = 10.0;
/// Courier's advance, in ems.
const COURIER_EM: f32 = 0.6;
/// Room kept at the foot of a page for its number.
const FOOT: f32 = 36.0;

/// The table's columns: heading and width in characters.
const COLUMNS: [(&str, usize); 7] = [
    ("Datum", 10),
    ("Weg", 16),
    ("Praxis", 30),
    ("Anschrift", 36),
    ("Telefon", 16),
    ("Antwort", 18),
    ("Antwort am", 10),
];
/// Characters between columns.
const GAP: usize = 2;

/// What the letter says about whom.
pub struct Letter<'a> {
    /// The patient's name, as intake holds it.
    pub name: String,
    /// The date of birth, as intake holds it (ISO date).
    pub date_of_birth: String,
    /// The contact log's rows (`GET /v1/searches/{patient}/contacts`).
    pub rows: &'a [Value],
    /// The day the letter is written.
    pub today: NaiveDate,
}

/// An ISO date or RFC 3339 time as a German date (`01.12.2026`); other
/// text unchanged.
fn german_date(text: &str) -> String {
    let day = DateTime::parse_from_rfc3339(text)
        .map(|at| at.date_naive())
        .or_else(|_| NaiveDate::parse_from_str(text, "%Y-%m-%d"));
    match day {
        Ok(day) => day.format("%d.%m.%Y").to_string(),
        Err(_) => text.to_string(),
    }
}

/// A row's cells, in the columns' order.
fn cells(row: &Value) -> [String; 7] {
    let text = |field: &str| row[field].as_str().unwrap_or_default().to_string();
    let channel = match row["channel"].as_str() {
        Some("email") => "E-Mail".to_string(),
        Some("phone follow-up") => "Telefon (Nachfrage)".to_string(),
        Some("phone") => "Telefon".to_string(),
        _ => text("channel"),
    };
    let answer = match row["outcome"].as_str() {
        Some("ACCEPTED") => "Platz angeboten",
        Some("REJECTED_NO_CAPACITY") => "keine Kapazität",
        Some("REJECTED_NOT_SUITABLE") => "nicht passend",
        Some("REJECTED_OTHER") => "abgelehnt",
        Some("NO_SHOW") => "nicht erschienen",
        Some("IN_SESSIONS") => "in Behandlung",
        _ => "keine Antwort",
    };
    [
        german_date(&text("date")),
        channel,
        text("practice"),
        text("address"),
        text("phone"),
        answer.to_string(),
        german_date(&text("answered_at")),
    ]
}

/// `text` broken into lines of at most `width` characters, at spaces
/// where it can, inside a word where the word is longer than a line.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        while !word.is_empty() {
            let used = line.chars().count();
            let room = if used == 0 { width } else { width - used - 1 };
            if word.len() <= room {
                if used > 0 {
                    line.push(' ');
                }
                line.extend(word.drain(..));
            } else if used > 0 {
                lines.push(std::mem::take(&mut line));
            } else {
                lines.push(word.drain(..width).collect());
            }
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// A text's bytes in WinAnsiEncoding, the base fonts' encoding for
/// Western European text (umlauts and ß included); what it cannot hold
/// becomes `?`.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c as u32 {
            0x20..=0x7e | 0xa0..=0xff => c as u8,
            _ => match c {
                '€' => 0x80,
                '„' => 0x84,
                '–' => 0x96,
                '—' => 0x97,
                '“' => 0x93,
                '”' => 0x94,
                '’' => 0x92,
                _ => b'?',
            },
        })
        .collect()
}

/// A table row's lines, each the row's cells padded to their columns.
fn row_lines(cells: &[String; 7]) -> Vec<String> {
    let wrapped: Vec<Vec<String>> = cells
        .iter()
        .zip(COLUMNS)
        .map(|(cell, (_, width))| wrap(cell, width))
        .collect();
    let height = wrapped.iter().map(Vec::len).max().unwrap_or(1);
    (0..height)
        .map(|n| {
            let mut line = String::new();
            for (cell, (_, width)) in wrapped.iter().zip(COLUMNS) {
                let part = cell.get(n).map(String::as_str).unwrap_or("");
                line.push_str(&format!("{part:<width$}{:GAP$}", ""));
            }
            line.trim_end().to_string()
        })
        .collect()
}

/// One page's text: lines in the Helvetica heading or the Courier table.
enum Text {
    /// Helvetica at a size, bold or not.
    Prose(String, f32, bool),
    /// A Courier table line; `true` for the heading row.
    Table(String, bool),
    /// Vertical room, in points.
    Space(f32),
}

impl Text {
    fn height(&self) -> f32 {
        match self {
            Text::Prose(_, size, _) => size * 1.4,
            Text::Table(..) => LINE,
            Text::Space(room) => *room,
        }
    }
}

/// The letter's text, laid out into pages.
fn pages(letter: &Letter<'_>) -> Vec<Vec<Text>> {
    let rows: Vec<[String; 7]> = letter.rows.iter().map(cells).collect();
    let dates: Vec<&str> = letter
        .rows
        .iter()
        .filter_map(|row| row["date"].as_str())
        .collect();
    let period = match (dates.iter().min(), dates.iter().max()) {
        (Some(first), Some(last)) => {
            format!("{} bis {}", german_date(first), german_date(last))
        }
        _ => "keine Kontaktaufnahmen".to_string(),
    };
    let emails = letter
        .rows
        .iter()
        .filter(|r| r["channel"] == "email")
        .count();
    let mut opening = vec![
        Text::Prose(
            "Nachweis der Suche nach einem Psychotherapieplatz".into(),
            15.0,
            true,
        ),
        Text::Prose(
            "zum Antrag auf Kostenerstattung nach § 13 Abs. 3 SGB V".into(),
            11.0,
            false,
        ),
        Text::Space(8.0),
        Text::Prose(format!("Patientin/Patient: {}", letter.name), 10.0, false),
        Text::Prose(
            format!("Geburtsdatum: {}", german_date(&letter.date_of_birth)),
            10.0,
            false,
        ),
        Text::Prose(format!("Zeitraum: {period}"), 10.0, false),
        Text::Prose(
            format!(
                "Angefragte Praxen: {emails} per E-Mail; Kontakte insgesamt: {}",
                rows.len()
            ),
            10.0,
            false,
        ),
        Text::Prose(
            format!("Erstellt am {}", letter.today.format("%d.%m.%Y")),
            10.0,
            false,
        ),
        Text::Space(10.0),
    ];
    let heading: Vec<String> = COLUMNS.iter().map(|(name, _)| name.to_string()).collect();
    let heading = row_lines(&heading.try_into().expect("seven headings"));
    let room = HEIGHT - 2.0 * MARGIN - FOOT;
    let mut pages = Vec::new();
    let mut page: Vec<Text> = std::mem::take(&mut opening);
    let start_table = |page: &mut Vec<Text>| {
        page.extend(heading.iter().map(|l| Text::Table(l.clone(), true)));
    };
    start_table(&mut page);
    for row in &rows {
        let lines = row_lines(row);
        let used: f32 = page.iter().map(Text::height).sum();
        // A row is never split over two pages (a practice's line stays whole).
        if used + (lines.len() as f32 + 0.4) * LINE > room {
            pages.push(std::mem::take(&mut page));
            start_table(&mut page);
        }
        page.push(Text::Space(0.4 * LINE));
        page.extend(lines.into_iter().map(|l| Text::Table(l, false)));
    }
    pages.push(page);
    pages
}

/// The letter as a PDF document.
pub fn pdf(letter: &Letter<'_>) -> Vec<u8> {
    let pages = pages(letter);
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let fonts = [
        (Name(b"F1"), Ref::new(3), "Helvetica"),
        (Name(b"F2"), Ref::new(4), "Helvetica-Bold"),
        (Name(b"F3"), Ref::new(5), "Courier"),
        (Name(b"F4"), Ref::new(6), "Courier-Bold"),
    ];
    let page_ids: Vec<(Ref, Ref)> = (0..pages.len() as i32)
        .map(|n| (Ref::new(10 + 2 * n), Ref::new(11 + 2 * n)))
        .collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().map(|(page, _)| *page))
        .count(pages.len() as i32);
    for (_, id, base) in &fonts {
        pdf.type1_font(*id)
            .base_font(Name(base.as_bytes()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    let total = pages.len();
    for (n, (texts, (page_id, content_id))) in pages.iter().zip(&page_ids).enumerate() {
        let mut page = pdf.page(*page_id);
        page.media_box(Rect::new(0.0, 0.0, WIDTH, HEIGHT));
        page.parent(tree);
        page.contents(*content_id);
        let mut resources = page.resources();
        let mut names = resources.fonts();
        for (name, id, _) in &fonts {
            names.pair(*name, *id);
        }
        names.finish();
        resources.finish();
        page.finish();
        let mut content = Content::new();
        let mut y = HEIGHT - MARGIN;
        for text in texts {
            y -= text.height();
            let (line, font, size) = match text {
                Text::Prose(line, size, bold) => (line, if *bold { b"F2" } else { b"F1" }, *size),
                Text::Table(line, heading) => {
                    (line, if *heading { b"F4" } else { b"F3" }, TABLE_SIZE)
                }
                Text::Space(_) => continue,
            };
            show(&mut content, Name(font), size, MARGIN, y, line);
        }
        let number = format!("Seite {} von {total}", n + 1);
        let x = WIDTH - MARGIN - number.len() as f32 * TABLE_SIZE * COURIER_EM;
        show(&mut content, Name(b"F3"), TABLE_SIZE, x, MARGIN, &number);
        pdf.stream(*content_id, &content.finish());
    }
    pdf.finish()
}

fn show(content: &mut Content, font: Name<'_>, size: f32, x: f32, y: f32, line: &str) {
    content.begin_text();
    content.set_font(font, size);
    content.next_line(x, y);
    content.show(Str(&win_ansi(line)));
    content.end_text();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_cells_wrap_at_spaces_and_inside_overlong_words() {
        assert_eq!(
            wrap("Teststraße 1, 10115 Berlin", 12),
            ["Teststraße", "1, 10115", "Berlin"]
        );
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), [""]);
    }

    #[test]
    fn umlauts_are_win_ansi_and_the_unknown_a_question_mark() {
        assert_eq!(win_ansi("Käße €"), b"K\xe4\xdfe \x80");
        assert_eq!(win_ansi("Ω"), b"?");
    }

    #[test]
    fn rows_spill_onto_numbered_pages_and_none_is_split() {
        let rows: Vec<Value> = (0..80)
            .map(|n| {
                json!({"date": "2026-11-02T09:00:00+00:00", "channel": "email",
                   "practice": format!("Praxis Test {n}"), "address": "Teststraße 1, 10115 Berlin",
                   "phone": "030 000000", "outcome": null, "answered_at": null})
            })
            .collect();
        let letter = Letter {
            name: "Erika Test".into(),
            date_of_birth: "1990-01-31".into(),
            rows: &rows,
            today: NaiveDate::from_ymd_opt(2026, 12, 4).unwrap(),
        };
        let pages = pages(&letter);
        assert!(pages.len() >= 3, "{} pages", pages.len());
        let mut seen = 0;
        for page in &pages {
            let used: f32 = page.iter().map(Text::height).sum();
            assert!(used <= HEIGHT - 2.0 * MARGIN - FOOT, "{used}");
            seen += page
                .iter()
                .filter(|t| matches!(t, Text::Table(line, false) if line.contains("Praxis Test")))
                .count();
        }
        assert_eq!(seen, 80);
        let document = pdf(&letter);
        assert!(document.starts_with(b"%PDF-"));
    }

    /// The text of a PDF as poppler's `pdftotext` reads it (scripts/install-tools
    /// installs poppler-utils).
    pub fn pdftotext(document: &[u8]) -> String {
        let dir = std::env::temp_dir().join(format!("letter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.pdf", document.len()));
        std::fs::write(&file, document).unwrap();
        let out = std::process::Command::new("pdftotext")
            .args(["-layout", file.to_str().unwrap(), "-"])
            .output()
            .expect("pdftotext (poppler-utils; scripts/install-tools installs it)");
        std::fs::remove_file(&file).ok();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn the_text_holds_the_patient_the_period_every_row_and_the_page_numbers() {
        let rows: Vec<Value> = (0..40)
            .map(|n| {
                json!({"date": format!("2026-11-{:02}T09:00:00+00:00", 1 + n % 28),
                   "channel": if n % 3 == 0 { "phone follow-up" } else { "email" },
                   "practice": format!("Dr. Praxis Müller-{n}"),
                   "address": format!("Lange Teststraße {n}, 10115 Berlin"),
                   "phone": format!("030 {:06}", n), "outcome": if n % 2 == 0 { json!("REJECTED_NO_CAPACITY") } else { json!(null) },
                   "answered_at": if n % 2 == 0 { json!("2026-11-30T12:00:00+00:00") } else { json!(null) }})
            })
            .collect();
        let letter = Letter {
            name: "Erika Test".into(),
            date_of_birth: "1990-01-31".into(),
            rows: &rows,
            today: NaiveDate::from_ymd_opt(2026, 12, 4).unwrap(),
        };
        let text = pdftotext(&pdf(&letter));
        assert!(text.contains("Patientin/Patient: Erika Test"), "{text}");
        assert!(text.contains("Geburtsdatum: 31.01.1990"), "{text}");
        assert!(
            text.contains("Zeitraum: 01.11.2026 bis 28.11.2026"),
            "{text}"
        );
        let pages = pages(&letter).len();
        assert!(pages >= 2);
        for page in 1..=pages {
            assert!(
                text.contains(&format!("Seite {page} von {pages}")),
                "{text}"
            );
        }
        for (n, row) in rows.iter().enumerate() {
            let line = text
                .lines()
                .find(|l| {
                    l.contains(&format!("Dr. Praxis Müller-{n} "))
                        || l.ends_with(&format!("Müller-{n}"))
                })
                .unwrap_or_else(|| panic!("row {n} missing:\n{text}"));
            let cells = cells(row);
            for cell in [&cells[0], &cells[4], &cells[5]] {
                assert!(line.contains(cell.as_str()), "{cell} not in {line}");
            }
            assert!(
                text.contains(&format!("Lange Teststraße {n},")),
                "address {n}"
            );
        }
    }
}
