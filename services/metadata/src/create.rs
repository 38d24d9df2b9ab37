//! Docker's CreateImage: store a config as an image.

use std::sync::Arc;

use imaged_api::internal::v1::GetLayersRequest;
use imaged_common::Error;
use imaged_common::clients::TransferClient;
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
            return Err(Error::InvalidArgument(
                "operating system is not supported".into(),
            ));
        }
        let chains: Vec<String> = parsed.chain_ids.iter().map(|c| c.to_string()).collect();
        let layers = images
            .transfer
            .rpc(|mut client: TransferClient| {
                // Transfer records the image as holding them now: the
                // image is stored next, under the gate releases take.
                let request = GetLayersRequest {
                    chain_ids: chains.clone(),
                    hold_for_image: id.to_string(),
                };
                async move { client.get_layers(request).await }
            })
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => Error::InvalidArgument(status.message().to_string()),
                Code::Unavailable => Error::Unavailable(status.message().to_string()),
                _ => Error::Internal(status.message().to_string()),
            })?;
        layer_sizes = layers.layers.iter().map(|l| l.size).collect();
    }

    let mut events = Vec::new();
    let id_text = id.to_string();
    let store = &images.store;
    let result = store.update(|tx| {
        let parent_id = if parent.is_empty() {
            None
        } else {
            let found = get_image(tx.index(), parent, None).map_err(|e| match e {
                Error::NotFound(_) => Error::NotFound(format!("unknown parent image ID {parent}")),
                other => other,
            })?;
            Some(found.id.to_string())
        };
        if parent_id.as_deref() == Some(id_text.as_str()) {
            return Err(Error::InvalidArgument(
                "an image cannot be its own parent".into(),
            ));
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
