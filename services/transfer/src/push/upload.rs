//! Uploading one blob: skipped when the registry has it, mounted from
//! another repository of the same registry when it can be, else streamed
//! from the content store under the upload limit, retried as Docker does.

use crate::neighbours::destination::PushSession;
use futures::TryStreamExt;
use imaged_common::Error;
use imaged_model::{Digest, Reference};

use super::events::{Progress, PushEvent, Step, say};
use super::{Pusher, Upload};
use crate::registry::{self, Retry};

/// Tries per blob upload, as Docker's push makes.
const UPLOAD_ATTEMPTS: u32 = 5;

impl Pusher {
    /// Uploads one blob unless the registry has it or can mount it; a
    /// transport failure is tried again ([`Retry`]), saying so.
    pub(super) async fn upload(
        &self,
        session: &dyn PushSession,
        target: &Reference,
        image_sources: &[oci_client::Reference],
        upload: &Upload,
        tx: &Progress,
    ) -> Result<(), Error> {
        let sources = &self.mount_sources(target, &upload.digest, image_sources);
        let tell = |step: Step| async {
            if let Some(layer) = &upload.layer {
                say(tx, PushEvent::layer(layer, step)).await;
            }
        };
        // "Waiting" only when the upload limit holds this one back, as
        // Docker says it.
        let _admitted = self
            .limits
            .uploads
            .admit_or(|| {
                if let Some(layer) = &upload.layer {
                    let _ = tx.try_send(PushEvent::layer(layer, Step::Waiting));
                }
            })
            .await;
        let retry = Retry {
            attempts: UPLOAD_ATTEMPTS,
        };
        let mut attempt = 1;
        loop {
            match self.upload_once(session, sources, upload, tx).await {
                Ok(step) => {
                    if upload.layer.is_some() {
                        // As Docker's distribution metadata: the next push
                        // to this registry can mount it from here.
                        self.content
                            .known_at()
                            .mark(&upload.digest, &target.name())?;
                    }
                    tell(step).await;
                    return Ok(());
                }
                Err(err) => match retry.after(attempt, &err) {
                    Some(wait) => {
                        tracing::warn!(blob = %upload.digest, attempt, "upload failed, retrying: {err}");
                        tell(Step::Retrying {
                            seconds: wait.as_secs(),
                        })
                        .await;
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(err),
                },
            }
        }
    }

    /// Where `blob` may be mounted from in `target`'s registry: the other
    /// repositories there it was last pushed to or pulled from (Docker's
    /// distribution metadata, newest first, three at most, as Docker
    /// tries), then those the image itself is known under.
    fn mount_sources(
        &self,
        target: &Reference,
        blob: &Digest,
        image_sources: &[oci_client::Reference],
    ) -> Vec<oci_client::Reference> {
        let known = self.content.known_at().repositories(blob);
        let mut sources: Vec<oci_client::Reference> = known
            .iter()
            .rev()
            .filter_map(|name| Reference::parse(name).ok())
            .filter(|r| r.domain() == target.domain() && r.path() != target.path())
            .take(3)
            .map(|r| registry::oci_reference(&r))
            .collect();
        for source in image_sources {
            if !sources
                .iter()
                .any(|s| s.repository() == source.repository())
            {
                sources.push(source.clone());
            }
        }
        sources
    }

    /// One try of [`Pusher::upload`]; answers the step that ends it.
    async fn upload_once(
        &self,
        session: &dyn PushSession,
        sources: &[oci_client::Reference],
        upload: &Upload,
        tx: &Progress,
    ) -> Result<Step, Error> {
        let what = format!("blob {}", upload.digest);
        let digest = upload.digest.to_string();
        if session
            .blob_exists(&digest)
            .await
            .map_err(|e| registry::error(&what, e))?
        {
            return Ok(Step::AlreadyExists);
        }
        for source in sources {
            if session.mount_blob(&digest, source).await.is_ok()
                && session.blob_exists(&digest).await.unwrap_or(false)
            {
                return Ok(Step::Mounted {
                    from: source.repository().to_string(),
                });
            }
        }
        let file = tokio::fs::File::open(self.content.path(&upload.digest)).await?;
        let total = upload.size;
        let progress = upload.layer.clone().map(|layer| (tx.clone(), layer));
        let mut sent = 0u64;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_err(oci_client::errors::OciDistributionError::from)
            .inspect_ok(move |chunk| {
                sent += chunk.len() as u64;
                if let Some((tx, layer)) = &progress {
                    let step = Step::Pushing {
                        current: sent,
                        total,
                    };
                    let _ = tx.try_send(PushEvent::layer(layer, step));
                }
            });
        session
            .push_blob(&digest, upload.size, Box::pin(body))
            .await
            .map_err(|e| registry::error(&what, e))?;
        Ok(Step::Pushed)
    }
}
