//! Decoding a batch's records into envelopes, or into the reason they
//! go to the dead-letter topic.

use super::Shared;
use super::retry::BatchError;
use crate::codec;
use crate::errors::ErrorCode;
use crate::processor::{Incoming, Processor};
use rdkafka::message::{Message, OwnedMessage};

/// A record of the batch after decoding: to process, or to dead-letter.
pub(super) enum Decoded {
    Good(Box<Incoming>),
    Bad(ErrorCode, String),
    /// A key without a value on a compacted topic: erasure, nothing to do.
    Tombstone,
}

pub(super) fn decode_error(error: codec::ReadError) -> Result<(ErrorCode, String), BatchError> {
    use codec::ReadError::*;
    match error {
        NotWireFormat => Ok((ErrorCode::NotWireFormat, error.to_string())),
        UnknownSchema(..) => Ok((ErrorCode::UnknownSchema, error.to_string())),
        Body(reason) => Ok((ErrorCode::UndecodableBody, reason)),
        Registry(reason) => Err(BatchError::Transient(format!("registry: {reason}"))),
    }
}

pub(super) async fn decode<P: Processor>(
    shared: &Shared<P>,
    message: &OwnedMessage,
) -> Result<Decoded, BatchError> {
    let logical = shared.config.logical(message.topic()).to_string();
    let Some(schema) = shared.contracts.schemas.get(&logical) else {
        return Ok(Decoded::Bad(
            ErrorCode::NotAnEnvelope,
            format!("no schema for topic {logical}"),
        ));
    };
    let Some(bytes) = message.payload() else {
        if shared.compacted.contains(&logical) && message.key().is_some() {
            return Ok(Decoded::Tombstone);
        }
        return Ok(Decoded::Bad(
            ErrorCode::NotWireFormat,
            "the record has no value".into(),
        ));
    };
    if bytes.len() > shared.config.max_record_bytes {
        return Ok(Decoded::Bad(
            ErrorCode::Oversize,
            format!(
                "{} bytes; at most {} are accepted",
                bytes.len(),
                shared.config.max_record_bytes
            ),
        ));
    }
    let value = match shared.codec.decode_as(bytes, &schema.schema).await {
        Ok(value) => value,
        Err(error) => {
            let (code, reason) = decode_error(error)?;
            return Ok(Decoded::Bad(code, reason));
        }
    };
    let key = message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    // The edge: a value no field may hold is refused here, naming the
    // field, before any processor stores it (PostgreSQL refuses NUL for
    // good, which would otherwise fail the batch at every retry).
    if let Some(problem) =
        crate::text::text_problem("the key", &key).or_else(|| crate::text::unsafe_value(&value, ""))
    {
        return Ok(Decoded::Bad(ErrorCode::UnsafeValue, problem));
    }
    let spec = shared
        .contracts
        .topics
        .topic(&logical)
        .expect("topics with schemas are declared");
    let (envelope, payload) = match crate::envelope::check(schema, &spec.key_fields, &key, value) {
        Ok(checked) => checked,
        Err((code, reason)) => return Ok(Decoded::Bad(code, reason)),
    };
    Ok(Decoded::Good(Box::new(Incoming {
        topic: logical,
        partition: message.partition(),
        offset: message.offset(),
        key,
        envelope,
        payload,
    })))
}
