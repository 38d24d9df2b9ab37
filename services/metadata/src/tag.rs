//! Docker's TagImage.

use imaged_common::Error;
use imaged_model::Reference;
use imaged_model::timestamp::now_nanos;

use crate::images::PendingEvent;
use crate::resolve::get_image;
use crate::store::Tx;

/// Points `target` at the image `source` names, moving the tag if it
/// pointed elsewhere, and records the time (Inspect's LastTagTime).
pub fn tag(
    tx: &mut Tx<'_>,
    source: &str,
    target: &str,
    events: &mut Vec<PendingEvent>,
) -> Result<(), Error> {
    let target = parse_target(target)?;
    let image = get_image(tx.index(), source, None)?;
    let id = image.id.to_string();
    let mut updated = (**image).clone();
    updated.meta.last_tag_time = Some(now_nanos());
    tx.put_image(updated);
    tx.put_ref(target.clone(), &id);
    events.push(PendingEvent::image(
        tx.index(),
        "tag",
        &id,
        &target.familiar(),
    ));
    Ok(())
}

/// A tag target: a name with an optional tag (default `latest`), never a
/// digest, never the name `sha256`.
pub fn parse_target(target: &str) -> Result<Reference, Error> {
    let reference = Reference::parse(target)?;
    if reference.digest().is_some() {
        return Err(Error::invalid_argument(
            "refusing to create a tag with a digest reference",
        ));
    }
    if reference.familiar_name() == "sha256" {
        return Err(Error::invalid_argument(
            "refusing to create an ambiguous tag using digest algorithm as name",
        ));
    }
    Ok(reference.with_default_tag())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked() {
        assert_eq!(parse_target("app").unwrap().familiar(), "app:latest");
        assert_eq!(
            parse_target("reg:5000/app:v2").unwrap().familiar(),
            "reg:5000/app:v2"
        );
        let err = |t: &str| parse_target(t).unwrap_err().to_string();
        assert_eq!(
            err(&format!("app@sha256:{}", "a".repeat(64))),
            "refusing to create a tag with a digest reference"
        );
        assert_eq!(
            err("sha256:abc"),
            "refusing to create an ambiguous tag using digest algorithm as name"
        );
        assert!(err("App").contains("must be lowercase"));
    }
}
