//! The one mapping from imaged's domain errors to gRPC status codes.
//!
//! Services return [`Error`]; the conversion to [`tonic::Status`] below is
//! the only place that decides which code a failure gets. An error is a
//! kind (the code it is reported with) and a message; one that has a
//! cause keeps it ([`Error::caused`]): a rule's typed error
//! (`DeleteConflict`, `DigestMismatch`, `LayerTooLarge`, …), or the I/O
//! error under a failure of our own, for logs and callers to look into
//! (`std::error::Error::source`, `downcast_ref`).

use std::sync::Arc;

use tonic::{Code, Status};

/// How the message of a pull the signature policy refused starts (as
/// skopeo and CRI-O word it); its code is `PERMISSION_DENIED`. The CRI
/// adapter recognises it to answer kubelet's `SignatureValidationFailed`.
pub const POLICY_REJECTED: &str = "Source image rejected: ";

/// The cause an [`Error`] keeps.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A failure a caller can act on: its kind (the gRPC code it is reported
/// with), the message it will read, and the cause, when one is kept.
#[derive(Clone, Debug)]
pub struct Error {
    kind: Code,
    message: String,
    source: Option<Cause>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

/// The constructors of each kind, one a code: `Error::not_found(…)`.
macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident => $code:ident;)*) => {
        impl Error {
            $(
                $(#[$doc])*
                pub fn $name(message: impl Into<String>) -> Self {
                    Error::new(Code::$code, message)
                }
            )*
        }
    };
}

kinds! {
    /// The thing asked for does not exist (`No such image: busybox:latest`).
    not_found => NotFound;
    /// The request itself is wrong: a bad reference, filter or archive.
    invalid_argument => InvalidArgument;
    /// The request is well formed but the current state forbids it, for
    /// example a delete conflict.
    failed_precondition => FailedPrecondition;
    /// The thing to create exists already.
    already_exists => AlreadyExists;
    /// A limit was reached: disk full, a lagging subscriber.
    resource_exhausted => ResourceExhausted;
    /// A peer service or registry cannot be reached; retrying may help.
    unavailable => Unavailable;
    /// The registry refused our credentials or gave none.
    unauthenticated => Unauthenticated;
    /// The registry knows who we are but forbids the action.
    permission_denied => PermissionDenied;
    /// The operation ran out of time.
    deadline_exceeded => DeadlineExceeded;
    /// The caller (or a peer's caller) gave up on the call.
    cancelled => Cancelled;
    /// A concurrent change got in the way; the caller may retry the whole
    /// operation.
    aborted => Aborted;
    /// The method is not served (a peer of another version).
    unimplemented => Unimplemented;
}

impl Error {
    /// An error of `kind` with `message` and no cause.
    pub fn new(kind: Code, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        self.kind
    }

    /// The message the caller reads.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this is a `kind` error.
    pub fn is(&self, kind: Code) -> bool {
        self.kind == kind
    }

    /// An error of `kind` that reads as its cause does and keeps it.
    pub fn caused(kind: Code, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error {
            kind,
            message: cause.to_string(),
            source: Some(Arc::new(cause)),
        }
    }

    /// The same error, reading `message` instead (its kind and cause kept).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// The typed cause of this error, if it is a `T`.
    pub fn cause<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.source.as_ref()?.downcast_ref::<T>()
    }

    /// A bug or an unexpected fault of our own (I/O on our own store),
    /// from any displayable cause.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Error::new(Code::Internal, cause.to_string())
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
    /// naming it). A peer never answers OK as an error; if one did, it is
    /// ours.
    fn from(status: Status) -> Self {
        let kind = match status.code() {
            Code::Ok => Code::Internal,
            code => code,
        };
        Error::new(kind, status.message())
    }
}

impl From<imaged_model::Error> for Error {
    /// Docker's vocabulary refused the input: the caller's to fix.
    fn from(err: imaged_model::Error) -> Self {
        match err {
            imaged_model::Error::InvalidArgument(message) => Error::invalid_argument(message),
        }
    }
}

impl From<std::io::Error> for Error {
    /// I/O on our own stores: a full disk is the caller's limit to know
    /// about, anything else is our fault.
    fn from(err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                let message = format!("no space left on device: {err}");
                Error::caused(Code::ResourceExhausted, err).with_message(message)
            }
            _ => Error::caused(Code::Internal, err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_and_keeps_messages() {
        let status: Status = Error::not_found("No such image: x:latest").into();
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
