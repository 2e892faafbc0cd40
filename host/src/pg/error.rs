//! What a Postgres error means for the caller.

use tokio_postgres::error::SqlState;

/// What to do about a Postgres error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Transient: try again (on a new connection if this one is gone).
    Retry,
    /// The data's fault: the row goes to `dead_letters`.
    Data,
    /// weir may not do this (a revoked GRANT, a wrong password): an operator has to act,
    /// so the work waits and tries again; nothing is the data's fault.
    Permission,
    /// None of these: report it.
    Fatal,
}

/// SQLSTATEs that go away by themselves (or when an operator frees a disk, ends a
/// read-only period…), besides class 08 (connection exceptions) and errors without a
/// SQLSTATE (the connection broke).
const RETRIABLE: &[SqlState] = &[
    SqlState::T_R_SERIALIZATION_FAILURE,
    SqlState::T_R_DEADLOCK_DETECTED,
    SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN,
    SqlState::LOCK_NOT_AVAILABLE,
    SqlState::QUERY_CANCELED,
    SqlState::ADMIN_SHUTDOWN,
    SqlState::CRASH_SHUTDOWN,
    SqlState::CANNOT_CONNECT_NOW,
    SqlState::INSUFFICIENT_RESOURCES,
    SqlState::DISK_FULL,
    SqlState::OUT_OF_MEMORY,
    SqlState::TOO_MANY_CONNECTIONS,
    SqlState::CONFIGURATION_LIMIT_EXCEEDED,
    SqlState::READ_ONLY_SQL_TRANSACTION,
    SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    SqlState::SYSTEM_ERROR,
    SqlState::IO_ERROR,
];

/// SQLSTATEs that say weir lacks a right: insufficient privilege, and class 28 (invalid
/// authorization: a role that may no longer log in, a changed password).
const PERMISSION: &[SqlState] = &[SqlState::INSUFFICIENT_PRIVILEGE];

/// Classes of SQLSTATE that blame the data: cardinality, data exception, integrity
/// constraint, syntax or access rule (a missing column), check option.
const DATA_CLASSES: &[&str] = &["21", "22", "23", "42", "44"];

/// What `e` means for the caller.
pub fn classify(e: &tokio_postgres::Error) -> Class {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed, unless a value could not be encoded or the
        // configuration is wrong.
        let text = e.to_string();
        return if text.starts_with("error serializing")
            || text.starts_with("error deserializing")
            || text.starts_with("invalid configuration")
        {
            Class::Fatal
        } else if tls_refused(e) {
            Class::Permission
        } else {
            Class::Retry
        };
    };
    classify_code(code)
}

/// What a SQLSTATE means for the caller.
pub fn classify_code(code: &SqlState) -> Class {
    if PERMISSION.contains(code) || code.code().starts_with("28") {
        Class::Permission
    } else if RETRIABLE.contains(code) || code.code().starts_with("08") {
        Class::Retry
    } else if DATA_CLASSES.contains(&&code.code()[..2]) || *code == SqlState::RAISE_EXCEPTION {
        Class::Data
    } else {
        Class::Fatal
    }
}

/// Whether the TLS handshake failed on the server's certificate (or the server has no
/// TLS while it is required): trying again changes nothing until an operator acts.
fn tls_refused(e: &tokio_postgres::Error) -> bool {
    let text = error_text(e);
    text.contains("invalid peer certificate") || text.contains("server does not support TLS")
}

/// A Postgres error as one line: its message and SQLSTATE, or the connection failure and
/// its causes.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.ends_with(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fall_into_their_classes() {
        for (code, class) in [
            (SqlState::INSUFFICIENT_PRIVILEGE, Class::Permission),
            (SqlState::INVALID_PASSWORD, Class::Permission),
            (
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                Class::Permission,
            ),
            (SqlState::DISK_FULL, Class::Retry),
            (SqlState::READ_ONLY_SQL_TRANSACTION, Class::Retry),
            (SqlState::QUERY_CANCELED, Class::Retry),
            (SqlState::CONNECTION_FAILURE, Class::Retry),
            (SqlState::UNIQUE_VIOLATION, Class::Data),
            (SqlState::UNDEFINED_COLUMN, Class::Data),
            (SqlState::NUMERIC_VALUE_OUT_OF_RANGE, Class::Data),
            (SqlState::RAISE_EXCEPTION, Class::Data),
            (SqlState::INTERNAL_ERROR, Class::Fatal),
        ] {
            assert_eq!(classify_code(&code), class, "{}", code.code());
        }
    }
}
