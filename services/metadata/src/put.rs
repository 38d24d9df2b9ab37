//! Recording images that imaged-transfer fetched or loaded (the metadata
//! half of Docker's pull and load), and handing a stored config back for a
//! push.

use imaged_api::v1::{ImageConfigResponse, PutImageRequest};
use imaged_common::Error;
use imaged_model::{Digest, Reference};

use crate::image_config::ImageConfig;
use crate::images::{Images, PendingEvent};
use crate::resolve::get_image;
use crate::store::{Image, ImageMeta, Index};

/// Stores the config (if new), points the tags at it (moving them, as a
/// pull does), adds the digest references, then sends the event.
/// Answers the image ID and whether any tag was created or moved.
pub fn put(
    images: &std::sync::Arc<Images>,
    request: PutImageRequest,
) -> Result<(String, bool), Error> {
    let parsed = ImageConfig::parse(&request.config)?;
    let id = Digest::sha256_of(&request.config);
    let id_text = id.to_string();
    let tags = parse_all(&request.tags)?;
    let digests = parse_all(&request.digests)?;
    if tags.iter().any(|t| t.digest().is_some()) || digests.iter().any(|d| d.digest().is_none()) {
        return Err(Error::InvalidArgument(
            "tags must not carry a digest and digests must".into(),
        ));
    }
    let mut events = Vec::new();
    let updated = images.store.update(|tx| {
        if tx.index().image(&id_text).is_none() {
            tx.put_image(Image {
                id: id.clone(),
                config_bytes: request.config.clone(),
                config: parsed.clone(),
                meta: ImageMeta {
                    parent: None,
                    last_tag_time: None,
                    built_locally: false,
                    layer_sizes: request.layer_sizes.clone(),
                },
            });
        }
        let mut updated = false;
        for digest in &digests {
            let key = digest.store_key();
            // An existing digest reference to another image is kept.
            if tx.index().resolve_ref(&key.to_string()).is_none() {
                tx.put_ref(key, &id_text);
            }
        }
        for tag in &tags {
            let key = tag.store_key();
            if tx.index().resolve_ref(&key.to_string()) != Some(id_text.as_str()) {
                tx.put_ref(key, &id_text);
                updated = true;
            }
        }
        if !request.action.is_empty() {
            let name = Reference::parse(&request.event_ref)
                .map(|r| r.familiar_name())
                .unwrap_or_default();
            let mut event = PendingEvent::image(tx.index(), "", &id_text, &name);
            event.set_action_and_actor(&request.action, &request.event_ref);
            events.push(event);
        }
        Ok(updated)
    })?;
    images.publish(events);
    Ok((id_text, updated))
}

fn parse_all(references: &[String]) -> Result<Vec<Reference>, Error> {
    references.iter().map(|r| Reference::parse(r)).collect()
}

/// The exact config bytes and references of the image `input` names.
pub fn config(index: &Index, input: &str) -> Result<ImageConfigResponse, Error> {
    let image = get_image(index, input, None)?;
    let id = image.id.to_string();
    let refs = index.refs_of(&id);
    Ok(ImageConfigResponse {
        id,
        config: image.config_bytes.clone(),
        repo_tags: refs
            .iter()
            .filter(|r| r.digest().is_none())
            .map(|r| r.to_string())
            .collect(),
        repo_digests: refs
            .iter()
            .filter(|r| r.digest().is_some())
            .map(|r| r.to_string())
            .collect(),
    })
}
