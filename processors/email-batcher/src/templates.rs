//! The emails' texts: minijinja templates (Jinja2 syntax) in a folder that
//! operators can replace without a rebuild (`TEMPLATES_DIR`). Each template
//! renders a first line `Betreff: ...` (the subject) and the body. All are
//! loaded and test-rendered at start, with undefined variables an error, so
//! a broken template stops the start instead of a send.

use minijinja::{Environment, UndefinedBehavior, path_loader};
use serde_json::{Value, json};
use std::path::Path;

/// Templates written to therapists: they never get a variable outside
/// [`THERAPIST_VARIABLES`], so no patient name can reach them.
pub const THERAPIST_TEMPLATES: [&str; 3] = ["inquiry", "decline", "follow_up"];

/// Every template psymatch uses.
pub const TEMPLATES: [&str; 4] = ["inquiry", "decline", "follow_up", "patient_update"];

/// What a templated message to a therapist may carry.
pub const THERAPIST_VARIABLES: [&str; 4] = ["inquiry_id", "patient_id", "date", "answer_by"];

/// The loaded templates.
pub struct Templates {
    env: Environment<'static>,
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

fn sample_recipient() -> Value {
    json!({"salutation": "FRAU", "title": "Dr.", "last_name": "Beispiel"})
}

/// A context every template renders with at start.
fn sample(name: &str) -> Value {
    match name {
        "inquiry" => json!({
            "recipient": sample_recipient(),
            "patients": [{"inquiry_id": "i-1", "patient_id": "p-1", "age": 30, "gender": "weiblich", "symptoms": ["Antriebslosigkeit"],
                          "insurer": "Beispielkasse", "therapy_experience": false, "open_to_group": true,
                          "availability": ["Di 16:00-19:00"]}],
        }),
        "patient_update" => json!({"recipient": sample_recipient(), "message": "Beispiel"}),
        _ => json!({"recipient": sample_recipient(), "inquiry_id": "i-1", "patient_id": "p-1",
                    "date": "2026-01-01", "answer_by": "2026-01-08"}),
    }
}

/// A variable for a therapist's template (an id, a date): on one line,
/// since the template may place it in the subject, where a line break
/// would move the rest of the subject into the body
/// ([`psymatch_runtime::text::single_line`]).
pub fn therapist_variable(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(psymatch_runtime::text::single_line(text)),
        other => other.clone(),
    }
}

impl Templates {
    /// Loads every template from `dir` and renders each once with a sample:
    /// an error names the template and what is wrong.
    pub fn load(dir: &Path) -> anyhow::Result<Templates> {
        anyhow::ensure!(
            dir.is_dir(),
            "TEMPLATES_DIR {} is not a directory",
            dir.display()
        );
        let mut env = Environment::new();
        env.set_loader(path_loader(dir));
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let templates = Templates { env };
        for name in TEMPLATES {
            templates
                .render(name, &sample(name))
                .map_err(|e| anyhow::anyhow!("template {}/{name}.j2: {e}", dir.display()))?;
        }
        Ok(templates)
    }

    /// Renders `name` with `context`. An error names the template, the
    /// line and what is wrong, never the template's text: it may reach a
    /// rejection on a topic.
    pub fn render(&self, name: &str, context: &Value) -> Result<Rendered, String> {
        let brief = |e: minijinja::Error| {
            let line = e.line().map_or(String::new(), |l| format!(" line {l}"));
            let detail = e.detail().map_or(String::new(), |d| format!(": {d}"));
            format!("{name}.j2{line}: {}{detail}", e.kind())
        };
        let template = self
            .env
            .get_template(&format!("{name}.j2"))
            .map_err(brief)?;
        let text = template.render(context).map_err(brief)?;
        let (first, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
        let subject = first
            .strip_prefix("Betreff:")
            .ok_or_else(|| format!("{name}.j2 must start with a line \"Betreff: ...\""))?
            .trim()
            .to_string();
        Ok(Rendered {
            subject,
            body: body.trim_start_matches('\n').to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> Templates {
        Templates::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))).unwrap()
    }

    #[test]
    fn greetings_follow_salutation_and_title() {
        let templates = bundled();
        for (recipient, greeting) in [
            (
                json!({"salutation": "FRAU", "title": "Dr.", "last_name": "Beispiel"}),
                "Sehr geehrte Frau Dr. Beispiel,",
            ),
            (
                json!({"salutation": "HERR", "title": null, "last_name": "Muster"}),
                "Sehr geehrter Herr Muster,",
            ),
            (
                json!({"salutation": "NONE", "title": null, "last_name": "Probe"}),
                "Guten Tag Probe,",
            ),
        ] {
            let mut context = sample("follow_up");
            context["recipient"] = recipient;
            let rendered = templates.render("follow_up", &context).unwrap();
            assert!(rendered.body.starts_with(greeting), "{}", rendered.body);
            assert_eq!(rendered.subject, "Erinnerung: Anfrage i-1");
        }
    }

    #[test]
    fn a_line_break_in_a_variable_stays_in_the_subject() {
        let templates = bundled();
        let mut context = sample("follow_up");
        context["inquiry_id"] = therapist_variable(&json!("i-1\r\nBcc: x@example.org\r\n\r\nText"));
        let rendered = templates.render("follow_up", &context).unwrap();
        assert_eq!(
            rendered.subject,
            "Erinnerung: Anfrage i-1  Bcc: x@example.org    Text"
        );
        // The id appears in the body too, but nothing moved there: no
        // line of the body begins with what followed the line break.
        assert!(
            !rendered
                .body
                .lines()
                .any(|l| l.starts_with("Bcc") || l == "Text"),
            "{}",
            rendered.body
        );
        assert_eq!(therapist_variable(&json!(7)), json!(7));
    }

    #[test]
    fn broken_templates_stop_the_start() {
        let dir = std::env::temp_dir().join(format!("templates-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in TEMPLATES {
            std::fs::copy(
                Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))
                    .join(format!("{name}.j2")),
                dir.join(format!("{name}.j2")),
            )
            .unwrap();
        }
        std::fs::copy(
            Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/templates/_greeting.j2"
            )),
            dir.join("_greeting.j2"),
        )
        .unwrap();
        assert!(Templates::load(&dir).is_ok());
        std::fs::write(dir.join("decline.j2"), "Betreff: x\n{{ patient_name }}").unwrap();
        let error = Templates::load(&dir).err().unwrap().to_string();
        assert!(
            error.contains("decline.j2") && error.contains("undefined"),
            "{error}"
        );
        std::fs::write(dir.join("decline.j2"), "Betreff: x\n{% if %}").unwrap();
        assert!(
            Templates::load(&dir)
                .err()
                .unwrap()
                .to_string()
                .contains("decline.j2")
        );
        std::fs::copy(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/decline.j2")),
            dir.join("decline.j2"),
        )
        .unwrap();
        // A render error says where and what, and quotes no template text.
        std::fs::write(
            dir.join("decline.j2"),
            "Betreff: x\nGEHEIMER-TEXT {{ 1 + none_such.field }}",
        )
        .unwrap();
        let loaded = Templates::load(&dir);
        let error = loaded.err().unwrap().to_string();
        assert!(
            error.contains("decline.j2 line 2") && !error.contains("GEHEIMER-TEXT"),
            "{error}"
        );
        std::fs::copy(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/decline.j2")),
            dir.join("decline.j2"),
        )
        .unwrap();
        std::fs::remove_file(dir.join("follow_up.j2")).unwrap();
        let error = Templates::load(&dir).err().unwrap().to_string();
        assert!(error.contains("follow_up.j2"), "{error}");
    }
}
