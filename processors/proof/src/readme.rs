//! `psymatch-proof readme`: the README's tour and "Asking psymatch", run
//! as written, in one shell, on the stack `scripts/run` leaves (the
//! README's own precondition).
//!
//! The commands are the `sh` blocks of those sections, as a reader would
//! paste them. What the README says they show is checked against what they
//! printed:
//! - a comment on a command's line names what its output holds: each event
//!   type (`patient.registered`) and error code (`PSY-V-002`) it names must
//!   be in the output, `a or b` meaning either;
//! - a comment line right below a command is a line of its output, `…`
//!   standing for what differs from run to run;
//! - a file a command writes with `--out` must exist and not be empty;
//! - every command must succeed, and the processors the tour starts must
//!   stop cleanly on the SIGTERM it tells the reader to send.
//!
//! On a stack where the tour ran before, its ids (`tour-1`, …) are known
//! already; the run then gives them a suffix of its own, so that what it
//! checks is this run's output and not the last one's.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The sections run, in the README's order.
const SECTIONS: [&str; 2] = ["## A ten-minute tour", "## Asking psymatch"];
/// The ids the tour makes up, renamed on a stack that has seen them.
const IDS: [&str; 5] = ["tour-run-1", "tour-flush-1", "tour-1", "tour-2", "nobody"];
/// How long the whole run may take (every wait in it is bounded too).
const DEADLINE: Duration = Duration::from_secs(600);

/// One command as a reader pastes it, with what the README says of it.
#[derive(Debug, PartialEq)]
pub struct Step {
    /// The command's text (continuation lines and here-documents included).
    pub command: String,
    /// Groups of texts the output must hold: one of each group.
    pub names: Vec<Vec<String>>,
    /// Lines of output shown below the command (`…` for what varies).
    pub shown: Vec<String>,
    /// Files written with `--out`.
    pub writes: Vec<String>,
    /// Started in the background (`&`).
    pub background: bool,
}

/// The text of the section under `heading`, up to the next heading of its
/// level.
pub fn section<'a>(readme: &'a str, heading: &str) -> anyhow::Result<&'a str> {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .with_context(|| format!("the README has no section {heading:?}"))?;
    let rest = &readme[start + heading.len() + 2..];
    Ok(&rest[..rest.find("\n## ").unwrap_or(rest.len())])
}

/// The commands of the `sh` blocks in `text`.
pub fn steps(text: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for block in text.split("```sh\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        let mut lines = block.lines();
        while let Some(line) = lines.next() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(shown) = trimmed.strip_prefix("# ") {
                if let Some(last) = steps.last_mut() {
                    last.shown.push(shown.to_string());
                }
                continue;
            }
            let mut command = line.to_string();
            let mut last = line;
            // A line ending in a backslash goes on; a here-document runs to
            // its terminator.
            while last.ends_with('\\') {
                let Some(next) = lines.next() else { break };
                command.push('\n');
                command.push_str(next);
                last = next;
            }
            if let Some(terminator) = here_document(line) {
                for next in lines.by_ref() {
                    command.push('\n');
                    command.push_str(next);
                    if next.trim() == terminator {
                        break;
                    }
                }
            }
            let remark = comment(last);
            let code = &last[..last.len() - remark.len()];
            steps.push(Step {
                names: names(remark),
                writes: writes(&command),
                background: code.trim_end_matches('#').trim_end().ends_with('&'),
                command,
                shown: Vec::new(),
            });
        }
    }
    steps
}

/// The terminator of a here-document the line starts (`<<'JSON'`).
fn here_document(line: &str) -> Option<String> {
    let rest = line.split("<<").nth(1)?;
    let word = rest.trim_start_matches('-').split_whitespace().next()?;
    Some(word.trim_matches(|c| c == '\'' || c == '"').to_string())
}

/// The comment a command line ends with (after whitespace and `#`, outside
/// quotes).
fn comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return &line[at + 1..],
            _ => {}
        }
        previous = c;
    }
    ""
}

/// The event types and error codes a comment names, `a or b` as one group.
fn names(comment: &str) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut or = false;
    for word in comment.split_whitespace() {
        if word == "or" {
            or = true;
            continue;
        }
        let word = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
        let event = word.contains('.')
            && word.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        let code = word.starts_with("PSY-") && word.len() == 9;
        if event || code {
            match groups.last_mut() {
                Some(group) if or => group.push(word.to_string()),
                _ => groups.push(vec![word.to_string()]),
            }
        }
        or = false;
    }
    groups
}

/// The files a command writes with `--out`.
fn writes(command: &str) -> Vec<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    words
        .windows(2)
        .filter(|pair| pair[0] == "--out")
        .map(|pair| pair[1].to_string())
        .collect()
}

/// Whether `output` has a line that is `shown`, `…` standing for anything.
pub fn shows(output: &str, shown: &str) -> bool {
    let parts: Vec<&str> = shown.split('…').map(str::trim).collect();
    output.lines().any(|line| {
        let mut rest = line.trim();
        if parts.len() == 1 {
            return rest == parts[0];
        }
        if !rest.starts_with(parts[0]) {
            return false;
        }
        for part in &parts[1..] {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        parts
            .last()
            .is_none_or(|last| last.is_empty() || rest.is_empty())
    })
}

/// What a step's output lacks of what the README says of it.
pub fn misses(step: &Step, output: &str, root: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    for group in &step.names {
        if !group.iter().any(|name| output.contains(name.as_str())) {
            missing.push(format!("names {}", group.join(" or ")));
        }
    }
    for shown in &step.shown {
        if !shows(output, shown) {
            missing.push(format!("shows the line {shown:?}"));
        }
    }
    for file in &step.writes {
        let path = root.join(file);
        if std::fs::metadata(&path).map_or(true, |m| m.len() == 0) {
            missing.push(format!("writes {file}"));
        }
    }
    missing
}

/// Runs the sections of `readme` in `root` (the repository, where
/// `.stack/env` is) and prints a table; true when every step did what the
/// README says.
pub async fn run(root: &Path, logs: &Path) -> anyhow::Result<bool> {
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let mut steps = Vec::new();
    for heading in SECTIONS {
        steps.extend(self::steps(section(&readme, heading)?));
    }
    anyhow::ensure!(!steps.is_empty(), "no commands in the README's sections");
    // A step's files tell whether it ran: none may be left from the last run.
    if logs.exists() {
        std::fs::remove_dir_all(logs)?;
    }
    std::fs::create_dir_all(logs)?;
    let logs = logs.canonicalize()?;
    let suffix = seen_before(root)
        .await?
        .then(|| format!("-{}", std::process::id()));
    if let Some(suffix) = &suffix {
        println!("the tour ran on this stack before: its ids get the suffix {suffix}");
    }
    let rename = |text: &str| {
        let mut text = text.to_string();
        if let Some(suffix) = &suffix {
            for id in IDS {
                text = text.replace(id, &format!("{id}{suffix}"));
            }
        }
        text
    };
    for step in &mut steps {
        step.command = rename(&step.command);
        for name in step.names.iter_mut().flatten() {
            *name = rename(name);
        }
        step.shown = step.shown.iter().map(|s| rename(s)).collect();
    }
    let script = script(&steps, &logs);
    std::fs::write(logs.join("readme.sh"), &script)?;
    let started = Instant::now();
    let ended = shell(root, &logs, &script).await?;
    let mut held = true;
    println!(
        "\nthe README's tour and \"Asking psymatch\", as written ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!("| # | command | exit | what the README says it shows |");
    println!("|---|---|---|---|");
    for (n, step) in steps.iter().enumerate() {
        let first = step.command.lines().next().unwrap_or_default();
        let Ok(code) = std::fs::read_to_string(logs.join(format!("{n}.rc"))) else {
            println!("| {n} | `{first}` | not run | |");
            held = false;
            continue;
        };
        let output = std::fs::read_to_string(logs.join(format!("{n}.out"))).unwrap_or_default();
        let missing = misses(step, &output, root);
        let code = code.trim();
        let verdict = if missing.is_empty() {
            "held".to_string()
        } else {
            format!("MISSING: {}", missing.join("; "))
        };
        held &= code == "0" && missing.is_empty();
        println!("| {n} | `{first}` | {code} | {verdict} |");
        if code != "0" || !missing.is_empty() {
            println!(
                "|   | output ({}): | | |",
                logs.join(format!("{n}.out")).display()
            );
            for line in output.lines().take(12) {
                println!("|   | {line} | | |");
            }
        }
    }
    let exits = std::fs::read_to_string(logs.join("exits")).unwrap_or_default();
    let clean = !exits.is_empty() && exits.lines().all(|l| l.trim() == "0");
    println!(
        "processors stopped with SIGTERM, exit statuses: {}",
        if exits.is_empty() {
            "none (not reached)".into()
        } else {
            exits.split_whitespace().collect::<Vec<_>>().join(" ")
        }
    );
    held &= clean && ended;
    println!("{}", if held { "HELD" } else { "BROKEN" });
    Ok(held)
}

/// Whether the stack has the tour's patient already (the database of
/// `.stack/env`, as the tour's shell sees it).
async fn seen_before(root: &Path) -> anyhow::Result<bool> {
    let env = std::fs::read_to_string(root.join(".stack/env"))?;
    let url = env
        .lines()
        .find_map(|l| l.strip_prefix("export DATABASE_URL="))
        .context(".stack/env sets no DATABASE_URL")?;
    let pool = psymatch_runtime::db::connect(url).await?;
    let known: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM intake.patients WHERE patient_id = 'tour-1'")
            .fetch_optional(&pool)
            .await
            .context("reading intake.patients (has scripts/run run on this stack?)")?;
    Ok(known.is_some())
}

/// The shell script: each step's output and exit status in files of their
/// own, stopping at the first that fails; then the processors the tour
/// started get the SIGTERM it tells the reader to send.
fn script(steps: &[Step], logs: &Path) -> String {
    let logs = logs.display();
    // The shell starts in the repository (as a reader's does), with no
    // variable of its own: the processors refuse settings they do not know.
    let mut script = String::new();
    for (n, step) in steps.iter().enumerate() {
        script.push_str(&format!(
            "{{\n{}\n}} > {logs}/{n}.out 2>&1\ncode=$?\necho $code > {logs}/{n}.rc\n",
            step.command
        ));
        // A process started in the background: its pid, to wait for its
        // exit status (bash forgets a job once it has ended).
        if step.background {
            script.push_str("started+=($!)\n");
        }
        script.push_str("[ $code = 0 ] || exit 1\n");
    }
    // As the README says: `kill %1 %2 %3 %4` (each drains, commits, exits).
    script.push_str(&format!(
        "kill %1 %2 %3 %4 || exit 1\nfor pid in \"${{started[@]}}\"; do wait $pid; echo $? >> {logs}/exits; done\n"
    ));
    script
}

/// Runs `script` in bash, in a process group of its own that is killed
/// when it is done or the deadline passed; false on the deadline.
async fn shell(root: &Path, logs: &Path, script: &str) -> anyhow::Result<bool> {
    use std::os::unix::process::CommandExt;
    // A fresh shell's environment, as a reader's terminal has: no settings
    // of earlier runs (the tour sources .stack/env itself).
    let keep = ["PATH", "HOME", "USER", "LANG", "TERM", "TMPDIR"];
    let mut command = std::process::Command::new("bash");
    command
        .arg("-c")
        .arg(script)
        .env_clear()
        .envs(
            keep.iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        )
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join("shell.out"))?)
        .stderr(Stdio::from(std::fs::File::create(logs.join("shell.err"))?))
        .process_group(0);
    let mut child = command.spawn().context("bash")?;
    let pid = child.id();
    let deadline = Instant::now() + DEADLINE;
    let ended = loop {
        if child.try_wait()?.is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // What the tour started and did not stop (on a failure) goes too.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    if !ended {
        bail!(
            "the README's commands did not end within {} s (logs: {})",
            DEADLINE.as_secs(),
            logs.display()
        );
    }
    Ok(true)
}

/// Where the repository is: the current directory, as `scripts/test` runs
/// the proofs.
pub fn root() -> anyhow::Result<PathBuf> {
    let here = std::env::current_dir()?;
    anyhow::ensure!(
        here.join("README.md").exists() && here.join(".stack/env").exists(),
        "run from the repository after scripts/run (README.md and .stack/env here)"
    );
    Ok(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "intro\n```sh\n. .stack/env\nfoo --a \\\n  --b > /tmp/x &   # patient.registered, then patient.updated\ncat > /tmp/r.json <<'JSON'\n{\"a\": \"# not a comment\"}\nJSON\nbar | tail -3   # email.sent or email.deferred, code PSY-V-002\n# {\"ready\":true}\nbaz --out /tmp/c.csv\n```\n";

    #[test]
    fn commands_their_comments_and_the_lines_they_show() {
        let steps = steps(TEXT);
        let commands: Vec<&str> = steps.iter().map(|s| s.command.as_str()).collect();
        assert_eq!(
            commands,
            [
                ". .stack/env",
                "foo --a \\\n  --b > /tmp/x &   # patient.registered, then patient.updated",
                "cat > /tmp/r.json <<'JSON'\n{\"a\": \"# not a comment\"}\nJSON",
                "bar | tail -3   # email.sent or email.deferred, code PSY-V-002",
                "baz --out /tmp/c.csv",
            ]
        );
        assert_eq!(
            steps[1].names,
            [vec!["patient.registered"], vec!["patient.updated"]]
        );
        assert!(steps[2].names.is_empty());
        assert_eq!(
            steps[3].names,
            [vec!["email.sent", "email.deferred"], vec!["PSY-V-002"]]
        );
        assert_eq!(steps[3].shown, ["{\"ready\":true}"]);
        assert_eq!(steps[4].writes, ["/tmp/c.csv"]);
        let background: Vec<bool> = steps.iter().map(|s| s.background).collect();
        assert_eq!(background, [false, true, false, false, false]);
    }

    #[test]
    fn a_shown_line_matches_with_what_varies_elided() {
        let output = "tour-1  SEARCHING since 2026-12-07 10:00 (3 inquiries)\nother";
        assert!(shows(output, "tour-1  SEARCHING since … (3 inquiries)"));
        assert!(shows(output, "tour-1  SEARCHING since …"));
        assert!(!shows(output, "tour-1  PLACED since …"));
        assert!(
            !shows(output, "tour-1  SEARCHING"),
            "a whole line, not a prefix"
        );
        assert!(shows("{\"ready\":true}\n", "{\"ready\":true}"));
    }

    #[test]
    fn what_is_missing_is_named() {
        let step = &steps(TEXT)[3];
        let missing = misses(step, "email.deferred\n{\"ready\":false}", Path::new("/"));
        assert_eq!(
            missing,
            ["names PSY-V-002", "shows the line \"{\\\"ready\\\":true}\""]
        );
    }

    #[test]
    fn the_readme_has_both_sections_with_commands() {
        let readme = include_str!("../../../README.md");
        for heading in SECTIONS {
            let steps = steps(section(readme, heading).unwrap());
            assert!(steps.len() > 3, "{heading}: {steps:?}");
        }
    }
}
