//! The commands of people (`matching-commands`): answers recorded,
//! therapists excluded, searches run by hand, the sweep for follow-ups. A
//! command that does not make sense is answered with `command.rejected`,
//! saying why.

use crate::input::RecordAnswer;
use crate::processor::{EVENTS, Matcher};
use crate::records::{AnswerOutcome, InquiryRecord, SearchStatus, TherapistRecord};
use crate::state::World;
use chrono::Duration;
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{Context, ProcessError};
use serde_json::{Value, json};

impl Matcher {
    /// `matching.record_answer`: the inquiry is answered, the practice
    /// cools down, accepted patients are placed (the first acceptance
    /// wins, later ones are declined politely), the others look further.
    pub(crate) fn answer(
        &self,
        world: &mut World,
        ctx: &mut Context<'_>,
        command: RecordAnswer,
    ) -> Result<(), ProcessError> {
        let id = command.inquiry_id;
        let Some(mut inquiry) = world.inquiries.get(&id).cloned() else {
            let reason = format!("inquiry {id} is not known");
            return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
        };
        let therapist = command.therapist_id;
        let of_practice = therapist == inquiry.therapist_id
            || world
                .members
                .get(&inquiry.email)
                .is_some_and(|m| m.contains(&therapist));
        if !of_practice {
            let reason = format!(
                "inquiry {id} went to therapist {}, not to {therapist}",
                inquiry.therapist_id
            );
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
        }
        if let Some(at) = inquiry.answered_at {
            let reason = format!(
                "inquiry {id} was answered already on {}",
                at.format("%Y-%m-%d")
            );
            return ctx.reject(EVENTS, ErrorCode::InvalidState, &reason);
        }
        let mut answers: Vec<(String, AnswerOutcome)> = Vec::new();
        for answer in command.answers {
            let patient = answer.patient_id;
            if !inquiry.patients.contains(&patient) {
                let reason = format!("patient {patient} is not in inquiry {id}");
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
            if answers.iter().any(|(p, _)| *p == patient) {
                let reason = format!("patient {patient} is answered twice");
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
            answers.push((patient, answer.outcome));
        }
        if answers.is_empty() {
            return ctx.reject(
                EVENTS,
                ErrorCode::InvalidCommand,
                "an answer names at least one patient",
            );
        }
        let answered_at = command.answered_at.unwrap_or(ctx.now());
        if answered_at > ctx.now() + Duration::hours(1) {
            let reason = format!("answered_at {answered_at} is in the future");
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
        }
        let accepted = answers
            .iter()
            .filter(|(_, o)| *o == AnswerOutcome::Accepted)
            .count();
        let outcome = if accepted == inquiry.patients.len() {
            "FULLY_ACCEPTED"
        } else if accepted > 0 {
            "PARTLY_ACCEPTED"
        } else {
            "FULLY_REJECTED"
        };
        let cooling_until = answered_at + self.config.rules.cooling();
        inquiry.answered_at = Some(answered_at);
        inquiry.answers = answers.iter().cloned().collect();
        let practice = inquiry.email.clone();
        let recipient_id = inquiry.therapist_id.clone();
        let patients = inquiry.patients.clone();
        // Answered before its email went out (by phone): the email must
        // not ask the practice about what it answered.
        let unsent = inquiry.unsent();
        inquiry.withdrawn |= unsent;
        world.put_inquiry(&id, inquiry);
        if unsent {
            withdrawal(
                ctx,
                &id,
                &recipient_id,
                &patients,
                "answered before the email",
            )?;
        }
        ctx.emit(
            EVENTS,
            "matching.inquiry_answered",
            json!({"inquiry_id": id, "therapist_id": recipient_id, "outcome": outcome,
                   "answers": answers.iter().map(|(p, o)| json!({"patient_id": p, "outcome": o})).collect::<Vec<_>>(),
                   "cooling_until": cooling_until.to_rfc3339()}),
        )?;
        // The practice as a whole cools down: it was written to as one.
        let mut members: Vec<String> = world.members_of(&practice);
        members.push(recipient_id.clone());
        for member in &members {
            world.update_therapist(member, |t| {
                t.cooling_until = t.cooling_until.max(Some(cooling_until))
            });
        }
        let mut placed = Vec::new();
        for (patient, outcome) in &answers {
            if *outcome == AnswerOutcome::RejectedNotSuitable {
                // Not suitable is not a matter of time: never this practice again.
                world.update_search(patient, |s| s.excluded.extend(members.iter().cloned()));
            }
            if *outcome != AnswerOutcome::Accepted {
                continue;
            }
            let placeable = world
                .searches
                .get(patient)
                .is_some_and(|s| matches!(s.status, SearchStatus::Active | SearchStatus::Paused));
            if placeable {
                placed.push(patient.clone());
                world.update_search(patient, |s| {
                    s.status = SearchStatus::Placed;
                    s.placed = Some((recipient_id.clone(), id.clone()));
                });
                ctx.emit(
                    EVENTS,
                    "matching.patient_placed",
                    json!({"patient_id": patient, "therapist_id": recipient_id, "inquiry_id": id}),
                )?;
                self.count("placed", 1);
            } else {
                // First acceptance wins; the others are thanked.
                let recipient = world
                    .therapists
                    .get(&recipient_id)
                    .map(TherapistRecord::recipient)
                    .unwrap_or(Value::Null);
                ctx.emit(
                    "email-commands",
                    "email.send_templated",
                    json!({"message_id": format!("decline-{id}-{patient}"), "therapist_id": recipient_id,
                           "template": "decline", "recipient": recipient,
                           "variables": {"inquiry_id": id, "patient_id": patient,
                                         "date": answered_at.format("%Y-%m-%d").to_string()}}),
                )?;
                self.count("declined", 1);
            }
        }
        // What the practice answered is not asked of it again; a patient
        // placed is asked of nobody.
        let answered: Vec<String> = answers.iter().map(|(p, _)| p.clone()).collect();
        self.withdraw(
            world,
            ctx,
            &answered,
            |i| i.email == practice,
            "answered by the practice",
        )?;
        self.withdraw(world, ctx, &placed, |_| true, "placed elsewhere")?;
        // The others of the inquiry look further.
        for patient in patients {
            if world.is_active(&patient) {
                world.to_match.insert(patient);
            }
        }
        Ok(())
    }

    /// Takes `patients` out of every inquiry not emailed yet that `which`
    /// selects, telling the email batcher (`email.withdraw_inquiry`); an
    /// inquiry left without patients is withdrawn whole.
    fn withdraw(
        &self,
        world: &mut World,
        ctx: &mut Context<'_>,
        patients: &[String],
        which: impl Fn(&InquiryRecord) -> bool,
        reason: &str,
    ) -> Result<(), ProcessError> {
        let mut touched: Vec<(String, InquiryRecord)> = world
            .inquiries
            .iter()
            .filter(|(_, i)| {
                i.unsent() && which(i) && i.patients.iter().any(|p| patients.contains(p))
            })
            .map(|(id, i)| (id.clone(), i.clone()))
            .collect();
        touched.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, mut inquiry) in touched {
            let (out, kept): (Vec<String>, Vec<String>) = inquiry
                .patients
                .iter()
                .cloned()
                .partition(|p| patients.contains(p));
            // Withdrawn whole, it keeps its patients: the record of whom
            // it was for ("withdrawn" in their searches).
            if kept.is_empty() {
                inquiry.withdrawn = true;
            } else {
                inquiry.patients = kept;
            }
            let therapist = inquiry.therapist_id.clone();
            world.put_inquiry(&id, inquiry);
            withdrawal(ctx, &id, &therapist, &out, reason)?;
            self.count("inquiry_withdrawn", 1);
        }
        Ok(())
    }

    /// `matching.exclude_therapist`: never this therapist for this search.
    pub(crate) fn exclude(
        &self,
        world: &mut World,
        ctx: &mut Context<'_>,
        patient: String,
        therapist: String,
    ) -> Result<(), ProcessError> {
        let Some(mut search) = world.searches.get(&patient).cloned() else {
            let reason = format!("patient {patient} has no search");
            return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
        };
        if !world.therapists.contains_key(&therapist) {
            let reason = format!("therapist {therapist} is not known");
            return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
        }
        search.excluded.insert(therapist);
        world.put_search(&patient, search);
        Ok(())
    }

    /// `matching.run`: one patient's search, explained in full, or every
    /// active search.
    pub(crate) fn run(
        &self,
        world: &mut World,
        ctx: &mut Context<'_>,
        run_id: String,
        patient: Option<String>,
    ) -> Result<(), ProcessError> {
        match patient {
            Some(patient) => {
                let Some(search) = world.searches.get(&patient) else {
                    let reason = format!("patient {patient} has no search");
                    return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
                };
                if search.status != SearchStatus::Active {
                    let reason = format!(
                        "the search of patient {patient} is {}, not active",
                        search.status.as_str().to_lowercase()
                    );
                    return ctx.reject(EVENTS, ErrorCode::InvalidState, &reason);
                }
                world.to_match.insert(patient.clone());
                world.to_explain.insert(patient.clone());
                world.explain_fully.insert(patient.clone());
                world.run_ids.insert(patient, run_id);
            }
            None => {
                let active = world.active_searches();
                world.to_match.extend(active);
                world.run_all = Some(run_id);
            }
        }
        Ok(())
    }

    /// Follow-ups for inquiries without an answer, and a run of the active
    /// searches no inquiry holds (the stale ones).
    pub(crate) fn sweep(
        &self,
        world: &mut World,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        let now = ctx.now();
        let mut due: Vec<(String, InquiryRecord)> = world
            .inquiries
            .iter()
            .filter(|(_, i)| {
                i.open()
                    && !i.follow_up_due
                    && i.sent_at
                        .is_some_and(|at| at + self.config.rules.follow_up() <= now)
            })
            .map(|(id, i)| (id.clone(), i.clone()))
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, mut inquiry) in due {
            ctx.emit(
                EVENTS,
                "matching.follow_up_due",
                json!({"inquiry_id": id, "therapist_id": inquiry.therapist_id}),
            )?;
            inquiry.follow_up_due = true;
            world.put_inquiry(&id, inquiry);
            self.count("follow_up_due", 1);
        }
        let stale: Vec<String> = world
            .searches
            .iter()
            .filter(|(id, s)| {
                s.status == SearchStatus::Active
                    && world.open_by_patient.get(*id).is_none_or(|o| o.is_empty())
            })
            .map(|(id, _)| id.clone())
            .collect();
        world.to_match.extend(stale);
        Ok(())
    }
}

/// `email.withdraw_inquiry` for `patients` of inquiry `id`, keyed by the
/// practice like the inquiry's email, so the batcher reads it after it.
fn withdrawal(
    ctx: &mut Context<'_>,
    id: &str,
    therapist: &str,
    patients: &[String],
    reason: &str,
) -> Result<(), ProcessError> {
    ctx.emit(
        "email-commands",
        "email.withdraw_inquiry",
        json!({"inquiry_id": id, "therapist_id": therapist, "patient_ids": patients, "reason": reason}),
    )
}
