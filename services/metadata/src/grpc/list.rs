//! ListImages and ImageDiskUsage as the API shows them, and the encoded
//! unfiltered answer kept until the store changes.

use bytes::Bytes;
use imaged_api::v1::{DiskUsageResponse, ImageSummary, ListImagesResponse};
use imaged_common::Error;

use crate::images::{Images, ListCache};
use crate::list::{self, DiskUsage, ListQuery, Row};

/// [`list::list`], encoded as a `ListImagesResponse`; the unfiltered
/// answer is kept until the store changes, so repeated `docker images`
/// cost a copy.
pub fn list_encoded(
    images: &Images,
    query: &ListQuery,
) -> Result<(Bytes, imaged_common::version::Version), Error> {
    let index = images.store.read();
    let version = images.store.version_of(&index);
    let cacheable = query.filters.is_empty();
    let mut cache = images.list_cache.lock().unwrap_or_else(|e| e.into_inner());
    if cacheable
        && let Some(hit) = cache.as_ref()
        && hit.generation == index.generation()
        && hit.all == query.all
        && hit.shared_size == query.shared_size
    {
        return Ok((hit.encoded.clone(), version));
    }
    let response = ListImagesResponse {
        images: summaries(list::list(&index, query)?),
    };
    let encoded = Bytes::from(prost::Message::encode_to_vec(&response));
    if cacheable {
        *cache = Some(ListCache {
            generation: index.generation(),
            all: query.all,
            shared_size: query.shared_size,
            encoded: encoded.clone(),
        });
    }
    Ok((encoded, version))
}

/// The rows, as the API lists them.
pub fn summaries(rows: Vec<Row>) -> Vec<ImageSummary> {
    rows.into_iter().map(summary).collect()
}

/// One row of `docker images`, as the API shows it.
pub fn summary(row: Row) -> ImageSummary {
    let image = &row.image;
    ImageSummary {
        id: image.id.to_string(),
        content_size: image.meta.content_size,
        user: image.config.container_config["User"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        parent_id: image.meta.parent.clone().unwrap_or_default(),
        created: image.config.created_secs(),
        created_at: image
            .config
            .created
            .as_ref()
            .map(|(t, _)| imaged_api::timestamp(*t)),
        size: image.size(),
        shared_size: row.shared_size,
        labels: image
            .config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        containers: row.containers,
        repo_tags: row.repo_tags,
        repo_digests: row.repo_digests,
    }
}

/// ImageDiskUsage's answer.
pub fn disk_usage(usage: DiskUsage) -> DiskUsageResponse {
    DiskUsageResponse {
        layers_size: usage.layers_size,
        images: summaries(usage.images),
        // The content store's, and what was pulled and served: the
        // gateway adds imaged-transfer's.
        ..Default::default()
    }
}
