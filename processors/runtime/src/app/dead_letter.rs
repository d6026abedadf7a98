//! The dead-letter record: the original bytes with headers saying why.

use super::Shared;
use crate::errors::ErrorCode;
use crate::events::{DeadLettered, Event};
use crate::processor::{Outgoing, Processor};
use rdkafka::message::{Headers, Message, OwnedMessage};
use uuid::Uuid;

/// The original record with headers saying why, for `<topic>.dlq`.
pub(super) fn dead_letter<P: Processor>(
    shared: &Shared<P>,
    message: &OwnedMessage,
    event_id: Option<Uuid>,
    code: ErrorCode,
    reason: &str,
) -> Outgoing {
    let logical = shared.config.logical(message.topic()).to_string();
    DeadLettered {
        topic: &logical,
        code,
        partition: message.partition(),
        offset: message.offset(),
        event_id,
    }
    .emit(&shared.metrics);
    shared.status.error(format!(
        "{code} on {logical}/{}@{}: {reason}",
        message.partition(),
        message.offset()
    ));
    let mut headers: Vec<(String, Option<String>)> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let source = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    headers.extend([
        (
            "psymatch.error.code".to_string(),
            Some(code.as_str().to_string()),
        ),
        (
            "psymatch.error.class".to_string(),
            Some(code.class().to_string()),
        ),
        (
            "psymatch.error.message".to_string(),
            Some(reason.to_string()),
        ),
        (
            "psymatch.processor".to_string(),
            Some(shared.processor.name().to_string()),
        ),
        (
            "psymatch.source.topic".to_string(),
            Some(message.topic().to_string()),
        ),
        (
            "psymatch.source.partition".to_string(),
            Some(message.partition().to_string()),
        ),
        (
            "psymatch.source.offset".to_string(),
            Some(message.offset().to_string()),
        ),
        (
            "psymatch.error.timestamp".to_string(),
            Some(chrono::Utc::now().to_rfc3339()),
        ),
    ]);
    // The outbox keeps keys as text, which PostgreSQL refuses to hold a
    // NUL: such a key travels with U+FFFD in its place, and its original
    // bytes in a header, so that the dead letter itself cannot fail.
    let key = message.key().map(|k| {
        let text = String::from_utf8_lossy(k);
        if text.contains('\0') {
            use base64::Engine;
            headers.push((
                "psymatch.source.key_base64".to_string(),
                Some(base64::engine::general_purpose::STANDARD.encode(k)),
            ));
            text.replace('\0', "\u{FFFD}")
        } else {
            text.into_owned()
        }
    });
    Outgoing {
        event_id: Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("dlq/{}/{source}", shared.config.group).as_bytes(),
        ),
        topic: format!("{}.dlq", message.topic()),
        key,
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}
