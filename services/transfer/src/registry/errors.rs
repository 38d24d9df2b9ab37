//! The one mapping from registry failures to imaged's errors, and the one
//! retry policy that reads them.

use imaged_common::Error;
use imaged_model::Reference;
use oci_client::errors::{OciDistributionError, OciErrorCode};

/// Sorts a registry failure into the code the caller acts on; `what`
/// names the thing asked for (`manifest for app:v1`, `blob sha256:…`).
pub fn error(what: &str, err: OciDistributionError) -> Error {
    use OciDistributionError as E;
    match err {
        E::AuthenticationFailure(msg) => {
            Error::Unauthenticated(format!("{what}: authentication failed: {msg}"))
        }
        E::UnauthorizedError { .. } => {
            Error::Unauthenticated(format!("{what}: unauthorized: authentication required"))
        }
        E::ImageManifestNotFoundError(_) => Error::NotFound(format!("{what}: not found")),
        E::RegistryError { envelope, .. } => {
            let message = envelope.to_string();
            match envelope.errors.first().map(|e| &e.code) {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => Error::NotFound(format!("{what}: not found: {message}")),
                Some(OciErrorCode::Unauthorized) => {
                    Error::Unauthenticated(format!("{what}: unauthorized: {message}"))
                }
                Some(OciErrorCode::Denied) => {
                    Error::PermissionDenied(format!("{what}: denied: {message}"))
                }
                Some(OciErrorCode::Toomanyrequests) => {
                    Error::ResourceExhausted(format!("{what}: too many requests: {message}"))
                }
                Some(OciErrorCode::NameInvalid | OciErrorCode::DigestInvalid) => {
                    Error::InvalidArgument(format!("{what}: {message}"))
                }
                _ => Error::Unavailable(format!("{what}: registry error: {message}")),
            }
        }
        E::ServerError { code, message, .. } => match code {
            404 => Error::NotFound(format!("{what}: not found")),
            401 => Error::Unauthenticated(format!("{what}: unauthorized: {message}")),
            403 => Error::PermissionDenied(format!("{what}: denied: {message}")),
            429 => Error::ResourceExhausted(format!("{what}: too many requests")),
            _ => Error::Unavailable(format!("{what}: registry answered {code}: {message}")),
        },
        E::RequestError(err) => Error::Unavailable(format!("{what}: {}", error_chain(&err))),
        E::IoError(err) => Error::Unavailable(format!("{what}: {err}")),
        E::DigestError(err) => Error::InvalidArgument(format!("{what}: {err}")),
        E::ManifestParsingError(err) => Error::InvalidArgument(format!("{what}: {err}")),
        E::UnsupportedMediaTypeError(media) => {
            Error::InvalidArgument(format!("{what}: unsupported media type {media}"))
        }
        E::UnsupportedSchemaVersionError(1) => Error::InvalidArgument(format!(
            "{what}: Docker Image manifest schema 1 is not supported; push the image again with a current client"
        )),
        other => Error::Unavailable(format!("{what}: {other}")),
    }
}

/// A failed manifest fetch for `reference` in Docker's words (moby's
/// `translatePullError`): an unknown manifest or repository, or a denied
/// one, names the reference and then gives the registry's code and
/// message; anything else reads as [`error`] does.
pub fn pull_error(reference: &Reference, err: OciDistributionError) -> Error {
    if let OciDistributionError::RegistryError { envelope, .. } = &err
        && let Some(first) = envelope.errors.first()
    {
        // Distribution's ErrorCode.Error(): the code in lower case, words
        // apart.
        let code = serde_json::to_value(&first.code)
            .ok()
            .and_then(|v| v.as_str().map(|c| c.to_lowercase().replace('_', " ")))
            .unwrap_or_default();
        let cause = format!("{code}: {}", first.message);
        match first.code {
            OciErrorCode::ManifestUnknown => {
                return Error::NotFound(format!(
                    "manifest for {} not found: {cause}",
                    reference.familiar()
                ));
            }
            OciErrorCode::NameUnknown => {
                return Error::NotFound(format!(
                    "repository {} not found: {cause}",
                    reference.familiar_name()
                ));
            }
            OciErrorCode::Denied => {
                return Error::PermissionDenied(format!(
                    "pull access denied for {}, repository does not exist or may require 'docker login': {cause}",
                    reference.familiar_name()
                ));
            }
            _ => {}
        }
    }
    error(&format!("manifest for {}", reference.familiar()), err)
}

/// Whether trying again may help: transport failures and server errors,
/// not refusals, rate limits or a full disk (Docker's do-not-retry list).
pub fn retryable(err: &Error) -> bool {
    matches!(err, Error::Unavailable(_))
}

/// The one retry policy for registry traffic (manifests, configs, layers):
/// only what [`retryable`] allows, at most `attempts` tries, waiting 1, 2,
/// 4, 8 and then 16 seconds between them.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
}

impl Retry {
    /// How long to wait after try `attempt` (from 1) failed with `err`
    /// before the next; `None` when there is to be no next.
    pub fn after(&self, attempt: u32, err: &Error) -> Option<std::time::Duration> {
        (retryable(err) && attempt < self.attempts)
            .then(|| std::time::Duration::from_secs(1 << (attempt.max(1) - 1).min(4)))
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_failures_are_retried_with_growing_waits() {
        let retry = Retry { attempts: 5 };
        let down = Error::Unavailable("connection refused".into());
        let waits: Vec<_> = (1..=5).map(|n| retry.after(n, &down)).collect();
        let secs = |s| Some(std::time::Duration::from_secs(s));
        assert_eq!(waits, [secs(1), secs(2), secs(4), secs(8), None]);
        for refusal in [
            Error::InvalidArgument("digest mismatch".into()),
            Error::NotFound("manifest unknown".into()),
            Error::ResourceExhausted("too many requests".into()),
            Error::DeadlineExceeded("stalled".into()),
        ] {
            assert_eq!(retry.after(1, &refusal), None, "{refusal}");
        }
    }
}
