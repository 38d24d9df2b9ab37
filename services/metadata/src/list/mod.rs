//! Docker's Images (`docker images`) and ImageDiskUsage.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use imaged_common::Error;
use imaged_model::filters::{Filters, RefPattern, label_matches};
use imaged_model::{Digest, Platform, Reference, timestamp};

use crate::resolve::get_image;
use crate::store::{Image, Index};

const KEYS: &[&str] = &["dangling", "label", "before", "since", "until", "reference"];

/// What `docker images` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Docker's filters, `key=value` each.
    pub filters: Vec<String>,
    /// Intermediate images too (`docker images -a`).
    pub all: bool,
    /// Work out each image's shared size (otherwise -1).
    pub shared_size: bool,
}

/// One row of `docker images`.
#[derive(Clone, Debug)]
pub struct Row {
    pub image: Arc<Image>,
    /// Familiar references, tags and digests apart.
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Bytes of its layers other images use too; -1 when not asked.
    pub shared_size: i64,
    /// How many containers stand on it.
    pub containers: i64,
}

/// Docker's ImageDiskUsage answer.
#[derive(Clone, Debug)]
pub struct DiskUsage {
    /// Bytes of the layers of non-intermediate images, each layer once.
    pub layers_size: i64,
    /// Every image, with its shared size, newest first.
    pub images: Vec<Row>,
}

/// Lists images as Docker's Images does (spec section 4.2), newest first.
pub fn list(index: &Index, request: &ListQuery) -> Result<Vec<Row>, Error> {
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
pub fn row(index: &Index, image: &Arc<Image>) -> Row {
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
) -> Row {
    Row {
        containers: index.containers_of(&image.id.to_string()).count() as i64,
        image: Arc::clone(image),
        repo_tags,
        repo_digests,
        shared_size,
    }
}

fn sort_newest_first(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        b.image
            .config
            .created_secs()
            .cmp(&a.image.config.created_secs())
            .then_with(|| a.image.id.cmp(&b.image.id))
    });
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
pub fn disk_usage(index: &Index) -> DiskUsage {
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
    DiskUsage {
        layers_size,
        images,
    }
}

#[cfg(test)]
mod tests;
