//! Where a pull reads manifests and configs: each mirror once, then the
//! registry with retries, each bounded in time; the one retry policy.

use imaged_model::digest::DigestMismatch;

use super::*;

impl Puller {
    /// The retry policy in force (its attempts can change at runtime).
    pub(super) fn retry(&self) -> Retry {
        Retry {
            attempts: self.limits.max_download_attempts(),
        }
    }

    /// Fetches a small JSON blob (a config) whole, digest checked.
    pub(super) async fn fetch_small(
        &self,
        target: &Target,
        desc: &OciDescriptor,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        self.fetch_at_most(target, desc, what, MAX_JSON_BLOB).await
    }

    /// Fetches the blob `desc` whole, digest checked, refused past `max`
    /// bytes whatever the descriptor claims.
    pub(super) async fn fetch_at_most(
        &self,
        target: &Target,
        desc: &OciDescriptor,
        what: &str,
        max: u64,
    ) -> Result<Vec<u8>, Error> {
        if desc.size < 0 || desc.size as u64 > max {
            return Err(Error::invalid_argument(format!(
                "{what}: {} bytes is too large",
                desc.size
            )));
        }
        let expected: Digest = desc.digest.parse()?;
        self.first_answer(
            target,
            what,
            |_| true,
            &|e| registry::error(what, e),
            |source| {
                let desc = desc.clone();
                let fetcher = Arc::clone(&self.fetcher);
                Box::pin(async move { fetcher.small_blob(source, &desc.digest, max).await })
            },
            |data| {
                let got = Digest::sha256_of(&data);
                if got != expected {
                    let mismatch = DigestMismatch {
                        expected: expected.clone(),
                        got,
                    };
                    return Err(Error::caused(tonic::Code::InvalidArgument, mismatch)
                        .with_message(format!(
                            "{what}: digest mismatch: the registry sent other bytes than {expected}"
                        )));
                }
                Ok(data)
            },
        )
        .await
    }

    /// Fetches the manifest at `digest`, or the one the target names (a
    /// mirror answers a tag only with the `resolve` capability). The
    /// registry's failures read as Docker's (`manifest for … not found: …`).
    pub(super) async fn fetch_manifest(
        &self,
        target: &Target,
        digest: Option<&str>,
    ) -> Result<(Bytes, String), Error> {
        let what = format!("manifest for {}", target.shown);
        let by_tag = digest.is_none() && target.reference.digest().is_none();
        self.first_answer(
            target,
            &what,
            |source| source.resolves || !by_tag,
            &|e| registry::pull_error(&target.reference, e),
            |source| {
                let oref = match digest {
                    Some(digest) => source.at_digest(digest),
                    None => source.oref.clone(),
                };
                let fetcher = Arc::clone(&self.fetcher);
                Box::pin(async move {
                    fetcher
                        .manifest(source, &oref, ACCEPTED, MAX_MANIFEST)
                        .await
                })
            },
            Ok,
        )
        .await
    }

    /// Runs `call` against each mirror `asks` allows, once, and then
    /// against the registry itself with retries; each bounded in time (a
    /// registry that sends headers and then nothing is given up on). A
    /// mirror's failure, or an answer `check` refuses, is logged and the
    /// next source tried; `failed` says what the registry's failure means.
    pub(super) async fn first_answer<T>(
        &self,
        target: &Target,
        what: &str,
        asks: impl Fn(&Source) -> bool,
        failed: &(dyn Fn(oci_client::errors::OciDistributionError) -> Error + Sync),
        call: impl for<'a> Fn(
            &'a Source,
        )
            -> BoxFuture<'a, Result<T, oci_client::errors::OciDistributionError>>,
        check: impl Fn(T) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (upstream, mirrors) = target.upstream_and_mirrors();
        for mirror in mirrors.iter().filter(|m| asks(m)) {
            let answer = within(what, async {
                call(mirror).await.map_err(|e| registry::error(what, e))
            })
            .await
            .and_then(&check);
            match answer {
                Ok(answer) => return Ok(answer),
                Err(err) => mirror_failed(mirror, &err),
            }
        }
        check(within(what, self.with_retries(failed, || call(upstream))).await?)
    }

    /// Runs a registry call, retrying what may pass with backoff; `failed`
    /// says what a failure means.
    pub(super) async fn with_retries<T, F, Fut>(
        &self,
        failed: &(dyn Fn(oci_client::errors::OciDistributionError) -> Error + Sync),
        mut call: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match call().await.map_err(failed) {
                Err(err) => match self.retry().after(attempt, &err) {
                    Some(delay) => {
                        tracing::warn!(attempt, "{err}; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(err),
                },
                ok => return ok,
            }
        }
    }
}

/// A mirror could not serve: said, and the next source is tried.
pub(super) fn mirror_failed(mirror: &Source, err: &Error) {
    tracing::warn!(
        mirror = mirror.name(),
        "mirror failed, trying the next source: {err}"
    );
}

/// Bounds a manifest or config fetch, retries included, by
/// [`MANIFEST_TIMEOUT`].
pub(super) async fn within<T>(
    what: &str,
    fetch: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(MANIFEST_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(Error::deadline_exceeded(format!(
                "{what}: the registry did not answer within {}s",
                MANIFEST_TIMEOUT.as_secs()
            )))
        })
}

/// Reads the fields that say what a manifest is, after its size and media
/// type checks.
pub(super) fn probe_manifest(what: &str, bytes: &[u8]) -> Result<Probe, Error> {
    if bytes.len() > crate::registry::manifest::MAX_MANIFEST {
        // Refused before parsing: a huge body is not worth decoding.
        check_manifest(what, bytes, &Probe::default())?;
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid_argument(format!("{what}: invalid manifest: {e}")))?;
    check_manifest(what, bytes, &probe)?;
    Ok(probe)
}
