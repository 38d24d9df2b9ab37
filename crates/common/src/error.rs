//! The one mapping from imaged's domain errors to gRPC status codes.
//!
//! Services return [`Error`]; the conversion to [`tonic::Status`] below is
//! the only place that decides which code a failure gets. An error is a
//! kind (the variant, or [`Error::Caused`]'s `kind`) and a message; one
//! that has a cause keeps it ([`Error::caused`]): a rule's typed error
//! (`DeleteConflict`, `DigestMismatch`, `LayerTooLarge`, …), or the I/O
//! error under a failure of our own, for logs and callers to look into
//! (`std::error::Error::source`, `downcast_ref`).

use std::sync::Arc;

use tonic::{Code, Status};

/// The cause an [`Error::Caused`] keeps.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A failure a caller can act on, with the message it will read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The thing asked for does not exist (`No such image: busybox:latest`).
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong: a bad reference, filter or archive.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is well formed but the current state forbids it, for
    /// example a delete conflict.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A limit was reached: disk full, a lagging subscriber.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A peer service or registry cannot be reached; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// The registry refused our credentials or gave none.
    #[error("{0}")]
    Unauthenticated(String),
    /// The registry knows who we are but forbids the action.
    #[error("{0}")]
    PermissionDenied(String),
    /// The operation ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or an unexpected fault of our own (I/O on our own store).
    #[error("{0}")]
    Internal(String),
    /// The caller (or a peer's caller) gave up on the call.
    #[error("{0}")]
    Cancelled(String),
    /// A concurrent change got in the way; the caller may retry the whole
    /// operation.
    #[error("{0}")]
    Aborted(String),
    /// A value past the valid range (a peer's answer, passed on).
    #[error("{0}")]
    OutOfRange(String),
    /// The method is not served (a peer of another version).
    #[error("{0}")]
    Unimplemented(String),
    /// Unrecoverable loss of data (a peer's answer, passed on).
    #[error("{0}")]
    DataLoss(String),
    /// A failure a peer could not classify, passed on as it was.
    #[error("{0}")]
    Unknown(String),
    /// A failure of `kind` (the code it is reported with) whose cause is
    /// kept: a typed error of the rule that refused, or an I/O error.
    #[error("{message}")]
    Caused {
        kind: Code,
        message: String,
        #[source]
        source: Cause,
    },
}

impl Error {
    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Internal(_) => Code::Internal,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Aborted(_) => Code::Aborted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Unknown(_) => Code::Unknown,
            Error::Caused { kind, .. } => *kind,
        }
    }

    /// An error of `kind` that reads as its cause does and keeps it.
    pub fn caused(kind: Code, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Caused {
            kind,
            message: cause.to_string(),
            source: Arc::new(cause),
        }
    }

    /// The typed cause of this error, if it is a `T`.
    pub fn cause<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            Error::Caused { source, .. } => source.downcast_ref::<T>(),
            _ => None,
        }
    }

    /// An internal error from any displayable cause.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Error::Internal(cause.to_string())
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

impl From<Status> for Error {
    /// A peer service's answer, passed on unchanged: the same code and
    /// message (a peer that cannot be reached is already `UNAVAILABLE`
    /// naming it).
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => Error::NotFound(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::OutOfRange => Error::OutOfRange(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::Aborted => Error::Aborted(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::ResourceExhausted => Error::ResourceExhausted(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::Cancelled => Error::Cancelled(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::DeadlineExceeded => Error::DeadlineExceeded(message),
            Code::Unimplemented => Error::Unimplemented(message),
            Code::DataLoss => Error::DataLoss(message),
            Code::Unknown => Error::Unknown(message),
            // A peer never answers OK as an error; if one did, it is ours.
            Code::Ok | Code::Internal => Error::Internal(message),
        }
    }
}

impl From<imaged_model::Error> for Error {
    /// Docker's vocabulary refused the input: the caller's to fix.
    fn from(err: imaged_model::Error) -> Self {
        match err {
            imaged_model::Error::InvalidArgument(message) => Error::InvalidArgument(message),
        }
    }
}

impl From<std::io::Error> for Error {
    /// I/O on our own stores: a full disk is the caller's limit to know
    /// about, anything else is our fault.
    fn from(err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::Caused {
                kind: Code::ResourceExhausted,
                message: format!("no space left on device: {err}"),
                source: Arc::new(err),
            },
            _ => Error::caused(Code::Internal, err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_and_keeps_messages() {
        let status: Status = Error::NotFound("No such image: x:latest".into()).into();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "No such image: x:latest");
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(Error::from(full).code(), Code::ResourceExhausted);
        let other = std::io::Error::from_raw_os_error(libc::EIO);
        let err = Error::from(other);
        assert_eq!(err.code(), Code::Internal);
        // The I/O error is kept as the cause.
        let cause = err.cause::<std::io::Error>().expect("an io::Error cause");
        assert_eq!(cause.raw_os_error(), Some(libc::EIO));
        assert!(std::error::Error::source(&err).is_some());
        // Every code a peer can answer passes through unchanged.
        for code in [
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ] {
            let back: Status = Error::from(Status::new(code, "peer said")).into();
            assert_eq!((back.code(), back.message()), (code, "peer said"));
        }
    }
}
