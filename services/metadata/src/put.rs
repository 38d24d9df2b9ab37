//! Recording images that imaged-transfer fetched or loaded (the metadata
//! half of Docker's pull and load), and handing a stored config back for a
//! push.

use std::collections::{BTreeMap, BTreeSet};

use imaged_common::Error;
use imaged_model::image_config::ImageConfig;
use imaged_model::{Digest, ImageRef, Platform, Reference};

use crate::images::{Images, Logged, PendingEvent};
use crate::resolve::get_image;
use crate::store::{Image, ImageMeta, Index};

pub use imaged_model::record::{ExportedImage, MovedTag, Record, Recorded, StoredImage};

/// Stores the config (if new), points the tags at it (moving them, as a
/// pull does), adds the digest references, then sends the event.
pub fn put(images: &std::sync::Arc<Images>, request: Record) -> Result<(Recorded, Logged), Error> {
    let parsed = ImageConfig::parse(&request.config)?;
    let id = Digest::sha256_of(&request.config);
    let id_text = id.to_string();
    let tags = parse_all(&request.tags)?;
    let digests = parse_all(&request.digests)?;
    if tags.iter().any(|t| t.digest().is_some()) || digests.iter().any(|d| d.digest().is_none()) {
        return Err(Error::invalid_argument(
            "tags must not carry a digest and digests must",
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
                    content_size: request.content_size,
                },
            });
        } else if request.content_size > 0
            && let Some(known) = tx.index().image(&id_text)
            && known.meta.content_size == 0
        {
            // Loaded first, pulled now: the registry's size is known.
            let mut image = (**known).clone();
            image.meta.content_size = request.content_size;
            tx.put_image(image);
        }
        let mut updated = false;
        let mut moved = Vec::new();
        for digest in &digests {
            let key = digest.store_key();
            // An existing digest reference to another image is kept.
            if tx.index().resolve_ref(&key.to_string()).is_none() {
                tx.put_ref(key, &id_text);
                // A pull by digest that adds its reference brought a newer
                // image (Docker); with tags, the tags decide.
                updated |= tags.is_empty();
            }
        }
        for tag in &tags {
            let key = tag.store_key();
            let before = tx.index().resolve_ref(&key.to_string()).map(str::to_string);
            if request.tag_events {
                let mut image = (**tx.index().image(&id_text).expect("stored above")).clone();
                image.meta.last_tag_time = Some(imaged_model::timestamp::now_nanos());
                tx.put_image(image);
                tx.put_ref(key.clone(), &id_text);
                events.push(PendingEvent::image(
                    tx.index(),
                    "tag",
                    &id_text,
                    &tag.familiar(),
                ));
            }
            if before.as_deref() != Some(id_text.as_str()) {
                if let Some(from_id) = before {
                    moved.push(MovedTag {
                        tag: tag.familiar(),
                        from_id,
                    });
                }
                tx.put_ref(key, &id_text);
                updated = true;
            }
        }
        if !request.action.is_empty() {
            // A pull or push names the repository; a load or import, whose
            // event is about the image ID, names that ID whole (Docker).
            let name = if request.event_ref.parse::<Digest>().is_ok() {
                request.event_ref.clone()
            } else {
                Reference::parse(&request.event_ref)
                    .map(|r| r.familiar_name())
                    .unwrap_or_else(|_| request.event_ref.clone())
            };
            let mut event = PendingEvent::image(tx.index(), "", &id_text, &name);
            event.set_action_and_actor(&request.action, &request.event_ref);
            events.push(event);
        }
        Ok((updated, moved))
    })?;
    let logged = images.publish(events);
    let (updated, moved) = updated;
    let recorded = Recorded {
        id: id_text,
        updated,
        moved,
    };
    Ok((recorded, logged))
}

fn parse_all(references: &[String]) -> Result<Vec<Reference>, Error> {
    references
        .iter()
        .map(|r| Reference::parse(r).map_err(Error::from))
        .collect()
}

/// The exact config bytes and references of the image `input` names.
pub fn config(index: &Index, input: &str) -> Result<StoredImage, Error> {
    let image = get_image(index, input, None)?;
    let id = image.id.to_string();
    let refs = index.refs_of(&id);
    Ok(StoredImage {
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

/// Docker's save name resolution (spec 9.1): each image once, with the
/// familiar tags to write, in the order first named.
pub fn export_set(
    index: &Index,
    names: &[String],
    wanted: Option<&Platform>,
) -> Result<Vec<ExportedImage>, Error> {
    let mut order: Vec<String> = Vec::new();
    let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |id: String, tag: Option<String>| {
        if !tags.contains_key(&id) {
            order.push(id.clone());
        }
        let entry = tags.entry(id).or_default();
        if let Some(tag) = tag {
            entry.insert(tag);
        }
    };
    for name in names {
        match ImageRef::parse(name)? {
            ImageRef::Id(_) => add(get_image(index, name, None)?.id.to_string(), None),
            ImageRef::Named(reference)
                if reference.tag().is_none() && reference.digest().is_none() =>
            {
                let mut found = false;
                for (r, id) in index.refs().filter(|(r, _)| r.name() == reference.name()) {
                    found = true;
                    add(id.to_string(), r.tag().map(|_| r.familiar()));
                }
                if !found {
                    // A short ID parses as a name; Docker names the raw
                    // input when it is not one either.
                    let image = get_image(index, name, None).map_err(|err| match err {
                        e if e.is(tonic::Code::NotFound) => {
                            Error::not_found(format!("No such image: {name}"))
                        }
                        other => other,
                    })?;
                    add(image.id.to_string(), None);
                }
            }
            // `sha256:<prefix>` parses as name:tag, but names the image by
            // ID: no tag goes into the archive for it.
            ImageRef::Named(reference) if reference.familiar_name() == "sha256" => {
                add(get_image(index, name, None)?.id.to_string(), None);
            }
            ImageRef::Named(reference) => {
                // Docker reads the reference store only: a missing tag is
                // its "reference does not exist", not "No such image".
                let id = index
                    .resolve_ref(&reference.store_key().to_string())
                    .ok_or_else(|| Error::not_found("reference does not exist"))?;
                let tag = reference.digest().is_none().then(|| reference.familiar());
                add(id.to_string(), tag);
            }
        }
    }
    let mut images = Vec::new();
    for id in &order {
        let image = index
            .image(id)
            .ok_or_else(|| Error::not_found(format!("No such image: {id}")))?;
        if let Some(wanted) = wanted
            && !wanted.is(&image.config.platform)
        {
            return Err(Error::not_found(format!(
                "no suitable export target found for platform {wanted}"
            )));
        }
        let parent = image
            .meta
            .parent
            .clone()
            .filter(|p| order.contains(p))
            .unwrap_or_default();
        images.push(ExportedImage {
            id: id.clone(),
            config: image.config_bytes.clone(),
            repo_tags: tags[id].iter().cloned().collect(),
            parent,
        });
    }
    Ok(images)
}
