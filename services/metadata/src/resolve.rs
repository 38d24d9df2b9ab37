//! Docker's GetImage: which image a "reference or ID" names.

use std::sync::Arc;

use imaged_api::v1::Platform as PlatformMsg;
use imaged_common::Error;
use imaged_model::{ImageRef, Platform};

use crate::store::{Image, Index};

/// Resolves `input` in Docker's order: full ID, then name (digest wins
/// over tag; bare names get `:latest`), then an ID prefix of any length.
/// With `platform`, the image must run on it (variant fallback applies).
pub fn get_image<'a>(
    index: &'a Index,
    input: &str,
    platform: Option<&Platform>,
) -> Result<&'a Arc<Image>, Error> {
    let image = find(index, input)?;
    if let Some(wanted) = platform
        && !wanted.runs_with_fallback(&image.config.platform)
    {
        return Err(Error::NotFound(format!(
            "image with reference {input} was found but its platform ({}) does not match the specified platform ({wanted})",
            image.config.platform
        )));
    }
    Ok(image)
}

fn find<'a>(index: &'a Index, input: &str) -> Result<&'a Arc<Image>, Error> {
    if input.is_empty() {
        return Err(Error::InvalidArgument("image name cannot be blank".into()));
    }
    let shown = match ImageRef::parse(input)? {
        ImageRef::Id(digest) => {
            let id = digest.to_string();
            return index
                .image(&id)
                .ok_or_else(|| Error::NotFound(format!("No such image: {id}")));
        }
        ImageRef::Named(reference) => {
            let key = reference.store_key();
            if let Some(image) = index
                .resolve_ref(&key.to_string())
                .and_then(|id| index.image(id))
            {
                return Ok(image);
            }
            key.familiar()
        }
    };
    by_prefix(index, input).ok_or_else(|| Error::NotFound(format!("No such image: {shown}")))
}

/// The one image whose ID starts with `input` (bare hex or `sha256:`-prefixed).
fn by_prefix<'a>(index: &'a Index, input: &str) -> Option<&'a Arc<Image>> {
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    if hex.is_empty()
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut found = None;
    for image in index.images() {
        if image.id.hex().starts_with(hex) {
            if image.id.hex() == hex {
                return Some(image);
            }
            if found.replace(image).is_some() {
                return None; // ambiguous
            }
        }
    }
    found
}

/// Whether `input` is a prefix of image `id` (`sha256:…` or bare hex):
/// ImageDelete's test for "removing by ID".
pub fn is_id_prefix(input: &str, image: &Image) -> bool {
    let full = image.id.to_string();
    !input.is_empty() && (full.starts_with(input) || image.id.hex().starts_with(input))
}

/// A platform from the API, or none when it is unset or empty.
pub fn platform(message: Option<&PlatformMsg>) -> Result<Option<Platform>, Error> {
    let Some(p) = message else { return Ok(None) };
    if p.os.is_empty() && p.architecture.is_empty() && p.variant.is_empty() {
        return Ok(None);
    }
    if p.os.is_empty() || p.architecture.is_empty() {
        return Err(Error::InvalidArgument(
            "optional platform fields provided, but OS and Architecture are missing".into(),
        ));
    }
    Ok(Some(Platform::new(&p.os, &p.architecture, &p.variant)))
}
