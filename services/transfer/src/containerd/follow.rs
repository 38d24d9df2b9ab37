//! Keeping containerd's names of each image the ones imaged has: imaged's
//! `tag`, `untag` and `delete` events followed for the life of the
//! process, and every stored image synced at start-up.

use super::*;

impl Containerd {
    /// Follows imaged's `tag`, `untag` and `delete` events for as long as
    /// the process runs, making containerd's names of each image the ones
    /// imaged has ([`Containerd::sync`]). After a lost connection to
    /// imaged-events it resumes from the last event it saw.
    pub async fn follow(self, events: Peer, metadata: Arc<dyn Recorder>) {
        // Start-up: what changed while imaged or containerd was down.
        loop {
            match metadata.image_ids().await {
                Ok(ids) => {
                    for id in ids {
                        if let Err(err) = self.sync(&id, metadata.as_ref()).await {
                            tracing::warn!(image = %id, "cannot register the image in containerd: {err}");
                        }
                    }
                    break;
                }
                Err(err) => {
                    tracing::debug!("cannot list images to register in containerd yet: {err}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        let mut since = String::new();
        loop {
            let mut client: EventLogClient = events.client();
            let request = SubscribeRequest {
                filters: [
                    "type=image",
                    "event=tag",
                    "event=untag",
                    "event=delete",
                    "event=load",
                    "event=import",
                ]
                .map(String::from)
                .to_vec(),
                since: since.clone(),
                until: String::new(),
            };
            match client.subscribe(request).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(event)) = stream.message().await {
                        let nanos = event.time_nano;
                        since = format!(
                            "{}.{:09}",
                            nanos.div_euclid(1_000_000_000),
                            nanos.rem_euclid(1_000_000_000)
                        );
                        let Some(actor) = event.actor else { continue };
                        if let Err(err) = self.sync(&actor.id, metadata.as_ref()).await {
                            tracing::warn!(image = %actor.id, "cannot update containerd's names of the image: {err}");
                        }
                    }
                }
                Err(status) => {
                    tracing::debug!("cannot follow imaged's events: {}", status.message());
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Makes containerd's names of the imaged image `id` those imaged
    /// has: names imaged no longer has are deleted, new tags recorded on
    /// the same target, and an image containerd does not have registered
    /// whole, under a manifest made from its config and layers.
    pub async fn sync(&self, id: &str, metadata: &dyn Recorder) -> Result<(), Error> {
        let current = self.names_of(id).await?;
        let answer = match metadata.image(id, None).await {
            Ok(answer) => Some(answer),
            Err(e) if e.is(tonic::Code::NotFound) => None,
            Err(err) => return Err(err),
        };
        let wanted: Vec<String> = answer
            .iter()
            .flat_map(|a| qualified_names(a).into_iter().chain([a.id.clone()]))
            .collect();
        for name in current.iter().filter(|n| !wanted.contains(n)) {
            self.delete(name).await?;
        }
        let Some(existing) = current.iter().find(|n| wanted.contains(n)) else {
            return match answer {
                Some(answer) => self.register_image(&self.made_image(answer)?).await,
                None => Ok(()),
            };
        };
        let mut client = images::images_client::ImagesClient::new(self.channel.clone());
        let target = client
            .get(self.request(
                images::GetImageRequest {
                    name: existing.clone(),
                },
                None,
            ))
            .await
            .map_err(|s| self.error("get image", existing, s))?
            .into_inner()
            .image
            .and_then(|i| i.target);
        let (Some(target), Ok(id)) = (target, id.parse::<Digest>()) else {
            return Ok(());
        };
        for name in wanted.iter().filter(|n| !current.contains(n)) {
            self.image_record(name, &id, &target).await?;
        }
        Ok(())
    }

    /// An image without a registry manifest, as containerd needs it: an
    /// OCI manifest made from the config and the layers (each described
    /// by its uncompressed digest, the diff ID, which is what it is), and
    /// the config.
    fn made_image(&self, answer: StoredImage) -> Result<Image, Error> {
        let config = ImageConfig::parse(&answer.config)?;
        let id: Digest = answer.id.parse()?;
        let layers = config
            .diff_ids
            .iter()
            .zip(&config.chain_ids)
            .map(|(diff_id, chain)| {
                uncompressed_layer(diff_id, self.layers.get(chain).map_or(0, |l| l.tar_size))
            })
            .collect();
        let manifest = uncompressed_manifest(&id, &answer.config, layers)?;
        let names = qualified_names(&answer);
        Ok(Image {
            blobs: vec![
                Blob {
                    digest: Digest::sha256_of(&manifest),
                    bytes: Bytes::from(manifest),
                },
                Blob {
                    digest: id.clone(),
                    bytes: Bytes::from(answer.config),
                },
            ],
            id,
            chains: config.chain_ids,
            names,
        })
    }

    /// The names containerd has for the imaged image `id`.
    pub async fn names_of(&self, id: &str) -> Result<Vec<String>, Error> {
        let mut client = images::images_client::ImagesClient::new(self.channel.clone());
        let listed = client
            .list(self.request(
                images::ListImagesRequest {
                    filters: vec![format!("labels.\"{IMAGE_LABEL}\"=={id}")],
                },
                None,
            ))
            .await
            .map_err(|s| self.error("list images", id, s))?
            .into_inner();
        Ok(listed.images.into_iter().map(|i| i.name).collect())
    }

    /// Deletes the image record `name`; a missing one is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let mut client = images::images_client::ImagesClient::new(self.channel.clone());
        match client
            .delete(self.request(
                images::DeleteImageRequest {
                    name: name.to_string(),
                    sync: false,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(self.error("delete image", name, status)),
        }
    }
}

/// An image's tags and digest references, fully qualified, as containerd
/// names images.
fn qualified_names(answer: &StoredImage) -> Vec<String> {
    answer
        .repo_tags
        .iter()
        .chain(&answer.repo_digests)
        .filter_map(|r| Reference::parse(r).ok())
        .map(|r| r.to_string())
        .collect()
}
