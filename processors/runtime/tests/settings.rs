//! Every `PSYMATCH_*` variable the project's scripts, code and docs use is
//! one `config::refuse_unknown` knows: otherwise a processor started from
//! a shell that exports it would refuse to start.

use psymatch_runtime::config::PROJECT_VARS;
use std::collections::BTreeSet;
use std::path::Path;

fn collect(dir: &Path, into: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') && name != ".ci" || name == "target" || name == "fixtures" {
            continue;
        }
        if path.is_dir() {
            collect(&path, into);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut rest = text.as_str();
        while let Some(at) = rest.find("PSYMATCH_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let word = &tail[..end];
            // A whole name, not a prefix written in prose (`PSYMATCH_*`).
            if word.len() > "PSYMATCH_".len() && !word.ends_with('_') {
                into.insert(word.to_string());
            }
            rest = &tail[end..];
        }
    }
}

#[test]
fn every_psymatch_variable_in_the_project_is_known() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut used = BTreeSet::new();
    for dir in [
        "scripts",
        ".ci",
        "processors",
        "docs",
        "ops",
        "tests",
        "bench",
    ] {
        if root.join(dir).is_dir() {
            collect(&root.join(dir), &mut used);
        }
    }
    for file in ["docker-compose.yml", ".env.example", "README.md"] {
        if let Ok(text) = std::fs::read_to_string(root.join(file)) {
            let dir = std::env::temp_dir().join("psymatch-settings-scan");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
            collect(&dir, &mut used);
        }
    }
    assert!(used.contains("PSYMATCH_TOOLS"), "the scan found {used:?}");
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| !PROJECT_VARS.contains(&name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "used in the project but not in config::PROJECT_VARS: {unknown:?}"
    );
}
