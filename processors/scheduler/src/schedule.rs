//! The schedule file: jobs with their cron expressions (six fields, in the
//! file's time zone), the command each publishes, and what happens to an
//! occurrence that fell into a downtime.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value;
use std::str::FromStr;

/// What to do with an occurrence that fell into a downtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Run the latest missed occurrence once at start.
    RunOnce,
    /// Wait for the next occurrence.
    Skip,
}

/// A job as written in the schedule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSpec {
    name: String,
    cron: String,
    topic: String,
    event_type: String,
    payload: Value,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default = "default_missed")]
    missed: Missed,
}

fn default_attempts() -> u32 {
    3
}

fn default_missed() -> Missed {
    Missed::Skip
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleSpec {
    timezone: String,
    jobs: Vec<JobSpec>,
}

/// A scheduled job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Name (unique).
    pub name: String,
    /// The cron expression as written.
    pub cron: String,
    schedule: cron::Schedule,
    /// Topic the command goes to.
    pub topic: String,
    /// The command's event type.
    pub event_type: String,
    /// The command's payload; `"{run_id}"` is replaced.
    pub payload: Value,
    /// Attempts before the run is dead-lettered.
    pub max_attempts: u32,
    /// Downtime policy.
    pub missed: Missed,
}

/// Every job, with the time zone their expressions are read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Time zone of the cron expressions.
    pub timezone: Tz,
    /// The jobs.
    pub jobs: Vec<Job>,
}

impl Schedule {
    /// Parses a schedule file; errors name the job and what is wrong.
    pub fn parse(text: &str) -> anyhow::Result<Schedule> {
        let spec: ScheduleSpec = serde_yaml_ng::from_str(text).context("schedule file")?;
        let timezone = Tz::from_str(&spec.timezone)
            .map_err(|_| anyhow::anyhow!("timezone {:?} is not an IANA zone", spec.timezone))?;
        let mut jobs = Vec::new();
        for job in spec.jobs {
            anyhow::ensure!(
                !jobs.iter().any(|j: &Job| j.name == job.name),
                "job {:?} appears twice",
                job.name
            );
            anyhow::ensure!(
                job.max_attempts >= 1,
                "job {:?}: max_attempts must be at least 1",
                job.name
            );
            // The scheduler's ACLs allow what topics.yaml lets it write.
            let contract = &psymatch_runtime::contracts::Contracts::embedded().topics;
            let allowed = contract
                .client("scheduler")
                .is_some_and(|c| c.writes.contains(&job.topic));
            anyhow::ensure!(
                allowed,
                "job {:?}: the scheduler may not publish to {} (topics.yaml, clients.scheduler.writes: {})",
                job.name,
                job.topic,
                contract
                    .client("scheduler")
                    .map(|c| c.writes.join(", "))
                    .unwrap_or_default()
            );
            let schedule = cron::Schedule::from_str(&job.cron)
                .map_err(|e| anyhow::anyhow!("job {:?}: cron {:?}: {e}", job.name, job.cron))?;
            jobs.push(Job {
                name: job.name,
                cron: job.cron,
                schedule,
                topic: job.topic,
                event_type: job.event_type,
                payload: job.payload,
                max_attempts: job.max_attempts,
                missed: job.missed,
            });
        }
        Ok(Schedule { timezone, jobs })
    }

    /// Occurrences of `job` after `from` up to and including `to`, in UTC.
    pub fn occurrences(
        &self,
        job: &Job,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        job.schedule
            .after(&from.with_timezone(&self.timezone))
            .map(|at| at.with_timezone(&Utc))
            .take_while(|at| *at <= to)
            .collect()
    }

    /// The next occurrence of `job` after `now`, in UTC.
    pub fn next(&self, job: &Job, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        job.schedule
            .after(&now.with_timezone(&self.timezone))
            .next()
            .map(|at| at.with_timezone(&Utc))
    }

    /// The latest occurrence of `job` at or before `now`, looking back at
    /// most `horizon`.
    pub fn latest(
        &self,
        job: &Job,
        now: DateTime<Utc>,
        horizon: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        self.occurrences(job, now - horizon, now).pop()
    }
}

/// The id of an occurrence: job name and UTC time.
pub fn run_id(job: &str, occurrence: DateTime<Utc>) -> String {
    format!("{job}-{}", occurrence.format("%Y%m%dT%H%M%SZ"))
}

/// Replaces `"{run_id}"` in every string of `value`.
pub(crate) fn fill(value: &Value, run_id: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("{run_id}", run_id)),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, run_id)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, run_id)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn business_times_in_berlin_are_stored_in_utc() {
        let schedule = Schedule::parse(include_str!("../schedule.yaml")).unwrap();
        let scrape = schedule
            .jobs
            .iter()
            .find(|j| j.name == "daily-scrape")
            .unwrap();
        // 02:00 in Berlin: 01:00 UTC in winter, 00:00 UTC in summer.
        let winter = schedule.occurrences(
            scrape,
            "2026-11-26T00:00:00Z".parse().unwrap(),
            "2026-11-27T00:00:00Z".parse().unwrap(),
        );
        assert_eq!(
            winter,
            vec!["2026-11-26T01:00:00Z".parse::<DateTime<Utc>>().unwrap()]
        );
        let summer = schedule.occurrences(
            scrape,
            "2026-07-01T00:00:00Z".parse().unwrap(),
            "2026-07-02T00:00:00Z".parse().unwrap(),
        );
        assert_eq!(
            summer,
            vec!["2026-07-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap()]
        );
        let flush = schedule
            .jobs
            .iter()
            .find(|j| j.name == "weekly-email-flush")
            .unwrap();
        let week = schedule.occurrences(
            flush,
            "2026-11-23T00:00:00Z".parse().unwrap(),
            "2026-11-30T12:00:00Z".parse().unwrap(),
        );
        assert_eq!(week.len(), 2, "{week:?}");
        assert_eq!(week[0].to_rfc3339(), "2026-11-23T08:00:00+00:00");
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let error = Schedule::parse("timezone: Mars/Base\njobs: []")
            .unwrap_err()
            .to_string();
        assert!(error.contains("Mars/Base"), "{error}");
        let job = |cron: &str| {
            format!(
                "timezone: Europe/Berlin\njobs:\n  - {{name: x, cron: \"{cron}\", topic: email-commands, event_type: email.flush_batches, payload: {{}}}}\n"
            )
        };
        let error = Schedule::parse(&job("not a cron")).unwrap_err().to_string();
        assert!(
            error.contains("job \"x\"") && error.contains("not a cron"),
            "{error}"
        );
        assert!(Schedule::parse(&job("0 0 9 * * MON")).is_ok());
        let line = "  - {name: x, cron: \"0 0 9 * * MON\", topic: email-commands, event_type: email.flush_batches, payload: {}}\n";
        let twice = format!("timezone: Europe/Berlin\njobs:\n{line}{line}");
        let error = Schedule::parse(&twice).unwrap_err().to_string();
        assert!(error.contains("twice"), "{error}");
    }

    #[test]
    fn the_run_id_fills_the_payload() {
        let filled = fill(
            &json!({"run_id": "{run_id}", "nested": ["a-{run_id}"], "n": 1}),
            "job-1",
        );
        assert_eq!(
            filled,
            json!({"run_id": "job-1", "nested": ["a-job-1"], "n": 1})
        );
    }
}
