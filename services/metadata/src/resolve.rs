//! Docker's GetImage: which image a "reference or ID" names.

use std::sync::Arc;

use imaged_common::{Error, resolve};
use imaged_model::Platform;

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
        return Err(Error::not_found(format!(
            "image with reference {input} was found but its platform ({}) does not match the specified platform ({wanted})",
            image.config.platform
        )));
    }
    Ok(image)
}

fn find<'a>(index: &'a Index, input: &str) -> Result<&'a Arc<Image>, Error> {
    resolve::find(index, input)
}

impl resolve::Images for Index {
    type Image = Arc<Image>;

    fn by_id(&self, id: &str) -> Option<&Arc<Image>> {
        self.image(id)
    }

    fn by_reference(&self, key: &str) -> Option<&Arc<Image>> {
        self.resolve_ref(key).and_then(|id| self.image(id))
    }

    fn by_prefix(&self, hex: &str) -> Option<&Arc<Image>> {
        let mut matching = self.by_id_prefix(hex);
        let first = matching.next()?;
        // An exact match sorts first and wins; otherwise one match only.
        (first.id.hex() == hex || matching.next().is_none()).then_some(first)
    }
}

/// Whether `input` is a prefix of image `id` (`sha256:…` or bare hex):
/// ImageDelete's test for "removing by ID".
pub fn is_id_prefix(input: &str, image: &Image) -> bool {
    let full = image.id.to_string();
    !input.is_empty() && (full.starts_with(input) || image.id.hex().starts_with(input))
}
