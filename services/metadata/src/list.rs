//! Docker's Images (`docker images`) and ImageDiskUsage.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use imaged_api::v1::{DiskUsageResponse, ImageSummary, ListImagesRequest, ListImagesResponse};
use imaged_common::Error;
use imaged_model::filters::{Filters, RefPattern, label_matches};
use imaged_model::{Digest, Platform, Reference, timestamp};

use crate::images::{Images, ListCache};
use crate::resolve::get_image;
use crate::store::{Image, Index};

const KEYS: &[&str] = &["dangling", "label", "before", "since", "until", "reference"];

/// [`list`], encoded as a `ListImagesResponse`; the unfiltered answer is
/// kept until the store changes, so repeated `docker images` cost a copy.
pub fn list_encoded(
    images: &Images,
    request: &ListImagesRequest,
) -> Result<(Bytes, imaged_common::version::Version), Error> {
    let index = images.store.read();
    let version = images.store.version_of(&index);
    let cacheable = request.filters.is_empty();
    let mut cache = images.list_cache.lock().unwrap_or_else(|e| e.into_inner());
    if cacheable
        && let Some(hit) = cache.as_ref()
        && hit.generation == index.generation()
        && hit.all == request.all
        && hit.shared_size == request.shared_size
    {
        return Ok((hit.encoded.clone(), version));
    }
    let response = ListImagesResponse {
        images: list(&index, request)?,
    };
    let encoded = Bytes::from(prost::Message::encode_to_vec(&response));
    if cacheable {
        *cache = Some(ListCache {
            generation: index.generation(),
            all: request.all,
            shared_size: request.shared_size,
            encoded: encoded.clone(),
        });
    }
    Ok((encoded, version))
}

/// Lists images as Docker's Images does (spec section 4.2), newest first.
pub fn list(index: &Index, request: &ListImagesRequest) -> Result<Vec<ImageSummary>, Error> {
    let filters = Filters::parse(&request.filters, KEYS)?;
    let dangling = filters.bool("dangling")?;
    let patterns = filters
        .get("reference")
        .iter()
        .map(|p| RefPattern::new(p))
        .collect::<Result<Vec<_>, _>>()?;

    // Time bounds: created strictly before `upper`, strictly after `lower`.
    let created_of = |input: &str| -> Result<Option<i128>, Error> {
        Ok(get_image(index, input, None)?
            .config
            .created
            .as_ref()
            .map(|(t, _)| *t))
    };
    let mut upper: Option<i128> = None;
    for before in filters.get("before") {
        if let Some(t) = created_of(before)? {
            upper = Some(upper.map_or(t, |u| u.min(t)));
        }
    }
    for until in filters.get("until") {
        let t = timestamp::parse_now(until)?;
        upper = Some(upper.map_or(t, |u| u.min(t)));
    }
    let mut lower: Option<i128> = None;
    for since in filters.get("since") {
        if let Some(t) = created_of(since)? {
            lower = Some(lower.map_or(t, |l| l.max(t)));
        }
    }
    let timed = ["before", "since", "until"]
        .iter()
        .any(|k| filters.contains(k));
    let host_os = Platform::host().os;

    let shared = request.shared_size.then(|| layer_use_counts(index));
    // With reference patterns only images with a matching reference can be
    // listed: find them from the references rather than test every image.
    let candidates: Option<BTreeSet<&str>> = (!patterns.is_empty()).then(|| {
        index
            .refs()
            .filter(|(r, _)| patterns.iter().any(|p| p.matches(r)))
            .map(|(_, id)| id)
            .collect()
    });
    let images: Box<dyn Iterator<Item = &Arc<Image>>> = match &candidates {
        Some(ids) => Box::new(ids.iter().filter_map(|id| index.image(id))),
        None => Box::new(index.images()),
    };
    let mut out = Vec::new();
    for image in images {
        let id = image.id.to_string();
        if dangling == Some(true) && index.has_children(&id) {
            continue; // only heads
        }
        let created = image.config.created.as_ref().map(|(t, _)| *t);
        if timed {
            let Some(created) = created else { continue };
            if upper.is_some_and(|u| created >= u) || lower.is_some_and(|l| created <= l) {
                continue;
            }
        }
        if !filters
            .get("label")
            .iter()
            .all(|l| label_matches(l, &image.config.labels))
        {
            continue;
        }
        if !image.config.os().eq_ignore_ascii_case(&host_os) {
            continue;
        }
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for reference in index.refs_of(&id) {
            if !patterns.is_empty() && !patterns.iter().any(|p| p.matches(reference)) {
                continue;
            }
            let familiar = reference.familiar();
            if reference.digest().is_some() {
                repo_digests.push(familiar);
            } else {
                repo_tags.push(familiar);
            }
        }
        if repo_tags.is_empty() && repo_digests.is_empty() {
            if index.has_children(&id) && !request.all {
                continue;
            }
            if dangling == Some(false) || !patterns.is_empty() {
                continue;
            }
        } else if dangling == Some(true) && !repo_tags.is_empty() {
            continue;
        }
        let shared_size = match &shared {
            Some(counts) => shared_size(image, counts),
            None => -1,
        };
        out.push(summary(index, image, repo_tags, repo_digests, shared_size));
    }
    sort_newest_first(&mut out);
    Ok(out)
}

/// The list row of `image` as an unfiltered ListImages gives it (no
/// shared size): what CRI shows of an image.
pub fn row(index: &Index, image: &Arc<Image>) -> ImageSummary {
    let (mut repo_tags, mut repo_digests) = (Vec::new(), Vec::new());
    for reference in index.refs_of(&image.id.to_string()) {
        if reference.digest().is_some() {
            repo_digests.push(reference.familiar());
        } else {
            repo_tags.push(reference.familiar());
        }
    }
    summary(index, image, repo_tags, repo_digests, -1)
}

fn summary(
    index: &Index,
    image: &Arc<Image>,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    shared_size: i64,
) -> ImageSummary {
    let id = image.id.to_string();
    ImageSummary {
        content_size: image.meta.content_size,
        user: image.config.container_config["User"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        parent_id: image.meta.parent.clone().unwrap_or_default(),
        repo_tags,
        repo_digests,
        created: image.config.created_secs(),
        created_at: image
            .config
            .created
            .as_ref()
            .map(|(t, _)| imaged_api::timestamp(*t)),
        size: image.size(),
        shared_size,
        labels: image
            .config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        containers: index.containers_of(&id).count() as i64,
        id,
    }
}

fn sort_newest_first(images: &mut [ImageSummary]) {
    images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
}

/// How many images use each chain ID (each prefix of each image's chain).
fn layer_use_counts(index: &Index) -> HashMap<Digest, usize> {
    let mut counts = HashMap::new();
    for image in index.images() {
        for chain in &image.config.chain_ids {
            *counts.entry(chain.clone()).or_insert(0) += 1;
        }
    }
    counts
}

/// Bytes of the image's layers that other images use too.
fn shared_size(image: &Image, counts: &HashMap<Digest, usize>) -> i64 {
    image
        .config
        .chain_ids
        .iter()
        .zip(&image.meta.layer_sizes)
        .filter(|(chain, _)| counts.get(*chain).copied().unwrap_or(0) > 1)
        .map(|(_, size)| *size)
        .sum()
}

/// Docker's ImageDiskUsage: every image with its shared size, and the
/// bytes of the layers of non-intermediate images, each layer once.
pub fn disk_usage(index: &Index) -> DiskUsageResponse {
    let counts = layer_use_counts(index);
    let mut seen = HashSet::new();
    let mut layers_size = 0;
    let mut images = Vec::new();
    for image in index.images() {
        let id = image.id.to_string();
        let refs = index.refs_of(&id);
        let intermediate = refs.is_empty() && index.has_children(&id);
        if !intermediate {
            for (chain, size) in image.config.chain_ids.iter().zip(&image.meta.layer_sizes) {
                if seen.insert(chain) {
                    layers_size += size;
                }
            }
        }
        let (digests, tags): (Vec<&Reference>, Vec<&Reference>) =
            refs.into_iter().partition(|r| r.digest().is_some());
        images.push(summary(
            index,
            image,
            tags.iter().map(|r| r.familiar()).collect(),
            digests.iter().map(|r| r.familiar()).collect(),
            shared_size(image, &counts),
        ));
    }
    sort_newest_first(&mut images);
    DiskUsageResponse {
        layers_size,
        content_size: 0,
        images,
    }
}
