//! Docker's CreateImage: store a config as an image.

use std::sync::Arc;

use imaged_common::Error;
use imaged_model::{Digest, Platform};
use tonic::Code;

use crate::images::{Images, PendingEvent};
use crate::resolve::get_image;
use crate::store::{Image, ImageMeta};
use imaged_model::image_config::ImageConfig;

/// Validates `config`, checks its layers exist in the layer store, and
/// stores it (byte for byte) with `parent`. Returns the image ID.
pub async fn create(images: &Arc<Images>, config: Vec<u8>, parent: &str) -> Result<String, Error> {
    let parsed = ImageConfig::parse(&config)?;
    let id = Digest::sha256_of(&config);
    // No layer release may slip between checking the layers and storing.
    let _gate = images.layer_gate.lock().await;
    let mut layer_sizes = Vec::new();
    if !parsed.diff_ids.is_empty() {
        if !parsed.os().eq_ignore_ascii_case(&Platform::host().os) {
            return Err(Error::invalid_argument("operating system is not supported"));
        }
        let chains: Vec<String> = parsed.chain_ids.iter().map(|c| c.to_string()).collect();
        // Transfer records the image as holding them now: the image is
        // stored next, under the gate releases take.
        layer_sizes = images
            .transfer
            .hold(chains, &id.to_string())
            .await
            .map_err(|err| match err.code() {
                Code::NotFound => Error::invalid_argument(err.message()),
                Code::Unavailable => err,
                _ => Error::internal(err),
            })?;
    }

    let mut events = Vec::new();
    let id_text = id.to_string();
    let store = &images.store;
    let result = store.update(|tx| {
        let parent_id = if parent.is_empty() {
            None
        } else {
            let found = get_image(tx.index(), parent, None).map_err(|e| match e {
                e if e.is(tonic::Code::NotFound) => {
                    Error::not_found(format!("unknown parent image ID {parent}"))
                }
                other => other,
            })?;
            Some(found.id.to_string())
        };
        if parent_id.as_deref() == Some(id_text.as_str()) {
            return Err(Error::invalid_argument("an image cannot be its own parent"));
        }
        if let Some(existing) = tx.index().image(&id_text) {
            // Creating an existing image changes nothing but its parent.
            if parent_id.is_some() && existing.meta.parent != parent_id {
                let mut updated = (**existing).clone();
                updated.meta.parent = parent_id;
                tx.put_image(updated);
            }
            return Ok(());
        }
        tx.put_image(Image {
            id,
            config_bytes: config,
            config: parsed,
            meta: ImageMeta {
                parent: parent_id,
                last_tag_time: None,
                built_locally: true,
                layer_sizes,
                content_size: 0,
            },
        });
        events.push(PendingEvent::image(
            tx.index(),
            "create",
            &id_text,
            &id_text,
        ));
        Ok(())
    });
    result?;
    let logged = images.publish(events);
    images.logged(logged).await;
    Ok(id_text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Service;
    use imaged_model::digest::chain_ids;

    fn config(layers: &[&str]) -> (Vec<u8>, Vec<String>) {
        let diff_ids: Vec<Digest> = layers
            .iter()
            .map(|l| Digest::sha256_of(l.as_bytes()))
            .collect();
        let quoted: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            quoted.join(",")
        );
        let chains = chain_ids(&diff_ids).iter().map(|c| c.to_string()).collect();
        (config.into_bytes(), chains)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_image_on_stored_layers_gets_their_sizes_and_a_create_event() {
        let s = Service::new();
        let (bytes, chains) = config(&["a", "b"]);
        s.layers.add(&chains[0], 3);
        s.layers.add(&chains[1], 4);
        let id = create(&s.images, bytes.clone(), "").await.unwrap();
        assert_eq!(id, Digest::sha256_of(&bytes).to_string());
        let index = s.images.store.read();
        let image = index.image(&id).unwrap();
        assert_eq!(image.meta.layer_sizes, [3, 4]);
        assert!(image.meta.built_locally);
        assert_eq!(s.said(), [format!("create {id}")]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_layer_or_parent_is_refused_and_stores_nothing() {
        let s = Service::new();
        let (bytes, chains) = config(&["a", "b"]);
        s.layers.add(&chains[0], 3);
        let err = create(&s.images, bytes.clone(), "").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        s.layers.add(&chains[1], 4);
        let err = create(&s.images, bytes, "sha256:0123").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        assert!(err.to_string().contains("unknown parent image ID"), "{err}");
        assert_eq!(s.images.store.read().image_count(), 0);
        assert!(s.said().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_removed_image_is_released_to_the_layer_store() {
        let s = Service::new();
        let (bytes, chains) = config(&["a"]);
        s.layers.add(&chains[0], 3);
        let id = create(&s.images, bytes, "").await.unwrap();
        let mut events = Vec::new();
        s.images
            .store
            .update(|tx| crate::delete::remove(tx, &id, false, true, &mut events))
            .unwrap();
        s.images.logged(s.images.publish(events)).await;
        // The release runs in the background, under the layer gate.
        for _ in 0..100 {
            if s.layers.released().contains(&id) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(s.layers.released().contains(&id));
        assert_eq!(s.said(), [format!("create {id}"), format!("delete {id}")]);
    }
}
