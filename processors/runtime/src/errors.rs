//! Stable error codes: the same code appears in dead-letter headers,
//! rejection events, logs and metric labels, and docs/error-codes.md lists them.

use std::fmt;

/// Every kind of error the runtime or a processor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The value is not in the Confluent wire format (magic byte, schema id).
    NotWireFormat,
    /// The schema id is unknown to the registry.
    UnknownSchema,
    /// The Avro body does not decode with its writer schema, or cannot be
    /// resolved to the schema this build reads.
    UndecodableBody,
    /// The value decodes but is not an envelope this topic carries.
    NotAnEnvelope,
    /// The Kafka key is missing or disagrees with the payload's key.
    KeyMismatch,
    /// The record is larger than the runtime accepts.
    Oversize,
    /// A value no field may hold, found at the edge before anything is
    /// stored: text with a NUL or another control character, a date or a
    /// timestamp outside the years psymatch accepts.
    UnsafeValue,
    /// A command with invalid domain values (answered with a rejection).
    InvalidCommand,
    /// A command about something unknown (patient, therapist, inquiry).
    UnknownSubject,
    /// A command not allowed in the subject's current state.
    InvalidState,
    /// No position can be found for an address (the upstream knows none and
    /// its postcode is not in the offline dataset).
    AddressNotFound,
    /// The database refuses the record's data for good (a value out of a
    /// column's range, a constraint the input breaks): dead-lettered after
    /// one careful retry, so that it cannot stall its partition.
    RefusedByDatabase,
    /// An event from another processor with values outside their domain
    /// (coordinates off the globe, an empty id): the producer's bug,
    /// dead-lettered instead of folded into state.
    InvalidEvent,
    /// A processor emitted a record that does not fit its topic's schema (a bug).
    OutputDoesNotFit,
    /// The database failed (retried).
    Database,
    /// The broker failed (retried).
    Broker,
    /// The schema registry failed (retried).
    Registry,
    /// An upstream web service failed (retried).
    Upstream,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::NotWireFormat,
        ErrorCode::UnknownSchema,
        ErrorCode::UndecodableBody,
        ErrorCode::NotAnEnvelope,
        ErrorCode::KeyMismatch,
        ErrorCode::Oversize,
        ErrorCode::UnsafeValue,
        ErrorCode::InvalidCommand,
        ErrorCode::UnknownSubject,
        ErrorCode::InvalidState,
        ErrorCode::AddressNotFound,
        ErrorCode::InvalidEvent,
        ErrorCode::RefusedByDatabase,
        ErrorCode::OutputDoesNotFit,
        ErrorCode::Database,
        ErrorCode::Broker,
        ErrorCode::Registry,
        ErrorCode::Upstream,
    ];

    /// The code as written everywhere, e.g. `PSY-D-001`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotWireFormat => "PSY-D-001",
            ErrorCode::UnknownSchema => "PSY-D-002",
            ErrorCode::UndecodableBody => "PSY-D-003",
            ErrorCode::NotAnEnvelope => "PSY-D-004",
            ErrorCode::KeyMismatch => "PSY-D-005",
            ErrorCode::Oversize => "PSY-D-006",
            ErrorCode::UnsafeValue => "PSY-D-007",
            ErrorCode::InvalidCommand => "PSY-V-001",
            ErrorCode::UnknownSubject => "PSY-V-002",
            ErrorCode::InvalidState => "PSY-V-003",
            ErrorCode::AddressNotFound => "PSY-V-004",
            ErrorCode::InvalidEvent => "PSY-V-005",
            ErrorCode::RefusedByDatabase => "PSY-V-006",
            ErrorCode::OutputDoesNotFit => "PSY-B-001",
            ErrorCode::Database => "PSY-T-001",
            ErrorCode::Broker => "PSY-T-002",
            ErrorCode::Registry => "PSY-T-003",
            ErrorCode::Upstream => "PSY-T-004",
        }
    }

    /// The class: `decode`, `validation`, `bug` or `transient`.
    pub fn class(self) -> &'static str {
        match self.as_str().as_bytes()[4] {
            b'D' => "decode",
            b'V' => "validation",
            b'B' => "bug",
            _ => "transient",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;
    use std::collections::BTreeSet;

    #[test]
    fn codes_are_unique_and_classified() {
        let codes: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::UnknownSchema.class(), "decode");
        assert_eq!(ErrorCode::InvalidCommand.class(), "validation");
        assert_eq!(ErrorCode::OutputDoesNotFit.class(), "bug");
        assert_eq!(ErrorCode::Broker.class(), "transient");
    }
}
