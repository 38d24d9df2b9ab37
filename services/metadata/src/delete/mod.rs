//! Docker's ImageDelete (`docker rmi`) and ImagesPrune.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use imaged_common::Error;
use imaged_model::Reference;
use imaged_model::filters::{Filters, label_matches};
use imaged_model::timestamp;
use tonic::Code;

use crate::images::PendingEvent;

mod conflict;

use crate::resolve::{get_image, is_id_prefix};
use crate::store::{Image, Index, Tx};
use conflict::Conflict;
pub use conflict::DeleteConflict;

/// Which conflicts a check looks for.
#[derive(Clone, Copy)]
struct Mask {
    hard: bool,
    referenced: bool,
    stopped: bool,
}

/// One line of a removal's answer, as `docker rmi` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// `Untagged: <familiar reference>`.
    Untagged(String),
    /// `Deleted: <image ID or layer chain ID>`.
    Deleted(String),
}

fn untagged(reference: &Reference) -> Line {
    Line::Untagged(reference.familiar())
}

fn deleted(id: String) -> Line {
    Line::Deleted(id)
}

fn conflict(index: &Index, id: &str, mask: Mask) -> Option<Conflict> {
    if mask.hard {
        if index.has_children(id) {
            return Some(Conflict::Child);
        }
        if let Some((cid, _)) = index.containers_of(id).find(|(_, c)| c.running) {
            return Some(Conflict::Running(cid.clone()));
        }
    }
    if mask.referenced && !index.refs_of(id).is_empty() {
        return Some(Conflict::Referenced);
    }
    if mask.stopped
        && let Some((cid, _)) = index.containers_of(id).find(|(_, c)| !c.running)
    {
        return Some(Conflict::Stopped(cid.clone()));
    }
    None
}

/// Whether `refs` count as one reference: at most one tag, and digests
/// of that tag's repository only (Docker's single-reference rule).
fn single_reference(refs: &[Reference]) -> bool {
    match refs {
        [] => false,
        [_] => true,
        _ => {
            let tags: Vec<&Reference> = refs.iter().filter(|r| r.digest().is_none()).collect();
            if tags.len() > 1 {
                return false;
            }
            let repo = tags.first().map_or_else(|| refs[0].name(), |t| t.name());
            let digest_repos: BTreeSet<String> = refs
                .iter()
                .filter(|r| r.digest().is_some())
                .map(Reference::name)
                .collect();
            digest_repos.len() <= 1 && digest_repos.iter().all(|r| *r == repo)
        }
    }
}

/// What a removal did: the answer's lines so far, and the images it
/// deleted (to name the layers they leave unused).
#[derive(Default)]
struct Removal {
    items: Vec<Line>,
    deleted: Vec<Arc<Image>>,
}

impl Removal {
    /// The answer as Docker gives it: after each deleted image, a
    /// `Deleted: <chain ID>` line for each of its layers no remaining image
    /// holds (top first, each once); and the bytes of those layers.
    fn finish(self, index: &Index) -> (Vec<Line>, u64) {
        // Borrowed, not copied: this runs inside the delete's transaction.
        let in_use: std::collections::HashSet<&imaged_model::Digest> = index
            .images()
            .flat_map(|image| image.config.chain_ids.iter())
            .collect();
        let mut reported = BTreeSet::new();
        let mut reclaimed = 0u64;
        let mut layer_lines: HashMap<String, Vec<Line>> = HashMap::new();
        for image in &self.deleted {
            let mut lines = Vec::new();
            for (i, chain) in image.config.chain_ids.iter().enumerate().rev() {
                if in_use.contains(chain) || !reported.insert(chain) {
                    continue;
                }
                let size = image.meta.layer_sizes.get(i).copied().unwrap_or(0);
                reclaimed += size.max(0) as u64;
                lines.push(deleted(chain.to_string()));
            }
            layer_lines.insert(image.id.to_string(), lines);
        }
        let mut items = Vec::with_capacity(self.items.len() + reported.len());
        for item in self.items {
            let layers = match &item {
                Line::Deleted(id) => layer_lines.remove(id),
                Line::Untagged(_) => None,
            };
            items.push(item);
            items.extend(layers.into_iter().flatten());
        }
        (items, reclaimed)
    }
}

/// One `docker rmi` (spec section 3.2); returns the answer's lines.
pub fn remove(
    tx: &mut Tx<'_>,
    input: &str,
    force: bool,
    prune: bool,
    events: &mut Vec<PendingEvent>,
) -> Result<Vec<Line>, Error> {
    let mut removal = Removal::default();
    remove_into(tx, input, force, prune, events, &mut removal)?;
    Ok(removal.finish(tx.index()).0)
}

/// [`remove`] into a [`Removal`], which prune shares across images.
fn remove_into(
    tx: &mut Tx<'_>,
    input: &str,
    force: bool,
    prune: bool,
    events: &mut Vec<PendingEvent>,
    removal: &mut Removal,
) -> Result<(), Error> {
    let image = get_image(tx.index(), input, None)?.clone();
    let id = image.id.to_string();
    let refs: Vec<Reference> = tx.index().refs_of(&id).into_iter().cloned().collect();
    let items = &mut removal.items;

    if !is_id_prefix(input, &image) {
        // By reference: remove that reference; the image only if nothing
        // else references it.
        if !force
            && single_reference(&refs)
            && let Some((cid, _)) = tx.index().containers_of(&id).next()
        {
            return Err(DeleteConflict::Reference {
                reference: input.to_string(),
                container: cid.clone(),
                image: image.id.short().to_string(),
            }
            .into());
        }
        let key = Reference::parse(input)?.store_key();
        if tx.index().resolve_ref(&key.to_string()).is_none() {
            return Err(Error::not_found("reference does not exist"));
        }
        events.push(PendingEvent::image(tx.index(), "untag", &id, &id));
        tx.delete_ref(&key);
        items.push(untagged(&key));
        if key.digest().is_none() {
            let remaining: Vec<Reference> = tx.index().refs_of(&id).into_iter().cloned().collect();
            let tag_left = remaining
                .iter()
                .any(|r| r.digest().is_none() && r.name() == key.name());
            if !tag_left {
                for r in remaining
                    .iter()
                    .filter(|r| r.digest().is_some() && r.name() == key.name())
                {
                    tx.delete_ref(r);
                    items.push(untagged(r));
                }
            }
        }
        if !tx.index().refs_of(&id).is_empty() {
            return Ok(());
        }
        delete_image(tx, &image, force, prune, true, removal, events)?;
    } else {
        // By ID: the image and all its references.
        if single_reference(&refs) {
            let mask = Mask {
                hard: true,
                referenced: false,
                stopped: !force,
            };
            if let Some(c) = conflict(tx.index(), &id, mask) {
                return Err(c.error(&image));
            }
            for r in &refs {
                events.push(PendingEvent::image(tx.index(), "untag", &id, &id));
                tx.delete_ref(r);
                items.push(untagged(r));
            }
        }
        delete_image(tx, &image, force, prune, false, removal, events)?;
    }
    Ok(())
}

/// Docker's delete helper: conflicts, then every remaining reference, the
/// image, and (when pruning) its parents that became unused.
fn delete_image(
    tx: &mut Tx<'_>,
    image: &Arc<Image>,
    force: bool,
    prune: bool,
    quiet: bool,
    removal: &mut Removal,
    events: &mut Vec<PendingEvent>,
) -> Result<(), Error> {
    let id = image.id.to_string();
    let mask = Mask {
        hard: true,
        referenced: !force,
        stopped: !force,
    };
    if let Some(c) = conflict(tx.index(), &id, mask) {
        let dangling = tx.index().refs_of(&id).is_empty() && !tx.index().has_children(&id);
        if quiet && (!dangling || c.used()) {
            return Ok(());
        }
        return Err(c.error(image));
    }
    let refs: Vec<Reference> = tx.index().refs_of(&id).into_iter().cloned().collect();
    for r in &refs {
        events.push(PendingEvent::image(tx.index(), "untag", &id, &id));
        tx.delete_ref(r);
        removal.items.push(untagged(r));
    }
    tx.delete_image(&id);
    events.push(PendingEvent::deleted(tx.index(), image));
    removal.items.push(deleted(id));
    removal.deleted.push(Arc::clone(image));
    if prune
        && let Some(parent) = image
            .meta
            .parent
            .as_deref()
            .and_then(|p| tx.index().image(p))
            .cloned()
    {
        delete_image(tx, &parent, false, true, true, removal, events)?;
    }
    Ok(())
}

const PRUNE_KEYS: &[&str] = &["dangling", "label", "label!", "until"];

/// Docker's ImagesPrune (spec section 5): removes dangling images (or,
/// with dangling=false, every unused image). Conflicts are skipped.
pub fn prune(
    tx: &mut Tx<'_>,
    request_filters: &[String],
    events: &mut Vec<PendingEvent>,
) -> Result<(Vec<Line>, u64), Error> {
    let filters = Filters::parse(request_filters, PRUNE_KEYS)?;
    let dangling = filters.bool("dangling")?.unwrap_or(true);
    let until = match filters.get("until") {
        [] => None,
        [one] => Some(timestamp::parse_now(one)?),
        _ => {
            return Err(Error::invalid_argument(
                "more than one until filter specified",
            ));
        }
    };
    let index = tx.index();
    let mut candidates: Vec<(String, Vec<Reference>)> = Vec::new();
    for image in index.images() {
        let id = image.id.to_string();
        let refs: Vec<Reference> = index.refs_of(&id).into_iter().cloned().collect();
        if index.has_children(&id) && (dangling || refs.is_empty()) {
            continue; // not a head, or intermediate
        }
        if let Some(until) = until {
            match &image.config.created {
                Some((t, _)) if *t <= until => {}
                _ => continue,
            }
        }
        let labels = &image.config.labels;
        if !filters
            .get("label")
            .iter()
            .all(|l| label_matches(l, labels))
        {
            continue;
        }
        let negated = filters.get("label!");
        if !negated.is_empty() && negated.iter().all(|l| label_matches(l, labels)) {
            continue;
        }
        if dangling && refs.iter().any(|r| r.digest().is_none()) {
            continue;
        }
        candidates.push((id, refs));
    }
    candidates.sort();

    let mut removal = Removal::default();
    for (id, refs) in candidates {
        let inputs: Vec<String> = if refs.is_empty() {
            vec![id.trim_start_matches("sha256:").to_string()]
        } else {
            refs.iter().map(|r| r.to_string()).collect()
        };
        for input in inputs {
            if tx.index().image(&id).is_none() {
                break; // already gone with a child's removal
            }
            // A refused image leaves nothing of its own in the answer.
            let (items, deleted) = (removal.items.len(), removal.deleted.len());
            match remove_into(tx, &input, false, true, events, &mut removal) {
                Ok(()) => {}
                Err(err) => {
                    removal.items.truncate(items);
                    removal.deleted.truncate(deleted);
                    if !matches!(err.code(), Code::FailedPrecondition | Code::NotFound) {
                        tracing::warn!(image = %id, "prune: cannot remove {input}: {err}");
                    }
                }
            }
        }
    }
    let (all, reclaimed) = removal.finish(tx.index());
    events.push(PendingEvent::prune(reclaimed));
    Ok((all, reclaimed))
}

#[cfg(test)]
mod tests;
