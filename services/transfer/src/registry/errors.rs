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
            Error::unauthenticated(format!("{what}: authentication failed: {msg}"))
        }
        E::UnauthorizedError { .. } => {
            Error::unauthenticated(format!("{what}: unauthorized: authentication required"))
        }
        E::ImageManifestNotFoundError(_) => Error::not_found(format!("{what}: not found")),
        E::RegistryError { envelope, .. } => {
            let message = envelope.to_string();
            match envelope.errors.first().map(|e| &e.code) {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => Error::not_found(format!("{what}: not found: {message}")),
                Some(OciErrorCode::Unauthorized) => {
                    Error::unauthenticated(format!("{what}: unauthorized: {message}"))
                }
                Some(OciErrorCode::Denied) => {
                    Error::permission_denied(format!("{what}: denied: {message}"))
                }
                Some(OciErrorCode::Toomanyrequests) => {
                    Error::resource_exhausted(format!("{what}: too many requests: {message}"))
                }
                Some(OciErrorCode::NameInvalid | OciErrorCode::DigestInvalid) => {
                    Error::invalid_argument(format!("{what}: {message}"))
                }
                _ => Error::unavailable(format!("{what}: registry error: {message}")),
            }
        }
        E::ServerError { code, message, .. } => match code {
            404 => Error::not_found(format!("{what}: not found")),
            401 => Error::unauthenticated(format!("{what}: unauthorized: {message}")),
            403 => Error::permission_denied(format!("{what}: denied: {message}")),
            429 => Error::resource_exhausted(format!("{what}: too many requests")),
            _ => Error::unavailable(format!("{what}: registry answered {code}: {message}")),
        },
        E::RequestError(err) => Error::unavailable(format!("{what}: {}", error_chain(&err))),
        E::IoError(err) => Error::unavailable(format!("{what}: {err}")),
        E::DigestError(err) => Error::invalid_argument(format!("{what}: {err}")),
        E::ManifestParsingError(err) => Error::invalid_argument(format!("{what}: {err}")),
        E::UnsupportedMediaTypeError(media) => {
            Error::invalid_argument(format!("{what}: unsupported media type {media}"))
        }
        E::UnsupportedSchemaVersionError(1) => Error::invalid_argument(format!(
            "{what}: Docker Image manifest schema 1 is not supported; push the image again with a current client"
        )),
        other => Error::unavailable(format!("{what}: {other}")),
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
                return Error::not_found(format!(
                    "manifest for {} not found: {cause}",
                    reference.familiar()
                ));
            }
            OciErrorCode::NameUnknown => {
                return Error::not_found(format!(
                    "repository {} not found: {cause}",
                    reference.familiar_name()
                ));
            }
            OciErrorCode::Denied => {
                return Error::permission_denied(format!(
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
    err.is(tonic::Code::Unavailable)
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
        let down = Error::unavailable("connection refused");
        let waits: Vec<_> = (1..=5).map(|n| retry.after(n, &down)).collect();
        let secs = |s| Some(std::time::Duration::from_secs(s));
        assert_eq!(waits, [secs(1), secs(2), secs(4), secs(8), None]);
        for refusal in [
            Error::invalid_argument("digest mismatch"),
            Error::not_found("manifest unknown"),
            Error::resource_exhausted("too many requests"),
            Error::deadline_exceeded("stalled"),
        ] {
            assert_eq!(retry.after(1, &refusal), None, "{refusal}");
        }
    }
}
