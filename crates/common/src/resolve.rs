//! Docker's GetImage: which image a "reference or ID" names. One order
//! for every holder of images: imaged-metadata's store and the gateway's
//! read model answer the same input with the same image or error.

use imaged_model::ImageRef;

use crate::Error;

/// What a holder of images answers for [`find`].
pub trait Images {
    type Image;

    /// The image with this full ID (`sha256:<hex>`).
    fn by_id(&self, id: &str) -> Option<&Self::Image>;

    /// The image a reference in store form (fully qualified) names.
    fn by_reference(&self, key: &str) -> Option<&Self::Image>;

    /// The one image whose ID's hex starts with `hex` (lowercase hex, not
    /// empty); an ID equal to `hex` wins; none when no or several match.
    fn by_prefix(&self, hex: &str) -> Option<&Self::Image>;
}

/// Resolves `input` in Docker's order: full ID, then name (digest wins
/// over tag; bare names get `:latest`), then an ID prefix of any length.
/// Errors: INVALID_ARGUMENT for a blank or malformed input, NOT_FOUND
/// ("No such image: …") when nothing matches.
pub fn find<'a, I: Images>(images: &'a I, input: &str) -> Result<&'a I::Image, Error> {
    if input.is_empty() {
        return Err(Error::invalid_argument("image name cannot be blank"));
    }
    let shown = match ImageRef::parse(input)? {
        ImageRef::Id(digest) => {
            let id = digest.to_string();
            return images
                .by_id(&id)
                .ok_or_else(|| Error::not_found(format!("No such image: {id}")));
        }
        ImageRef::Named(reference) => {
            let key = reference.store_key();
            if let Some(image) = images.by_reference(&key.to_string()) {
                return Ok(image);
            }
            key.familiar()
        }
    };
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    let is_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (!hex.is_empty() && hex.bytes().all(is_hex))
        .then(|| images.by_prefix(hex))
        .flatten()
        .ok_or_else(|| Error::not_found(format!("No such image: {shown}")))
}
