//! The API's messages as the operations take them.

use imaged_api::internal::v1::PutImageRequest;
use imaged_api::v1::{ListImagesRequest, Platform as PlatformMsg};
use imaged_common::Error;
use imaged_model::Platform;

use crate::list::ListQuery;
use crate::put::Record;

/// A platform from the API, or none when it is unset or empty.
pub fn platform(message: Option<&PlatformMsg>) -> Result<Option<Platform>, Error> {
    let Some(p) = message else { return Ok(None) };
    if p.os.is_empty() && p.architecture.is_empty() && p.variant.is_empty() {
        return Ok(None);
    }
    if p.os.is_empty() || p.architecture.is_empty() {
        return Err(Error::invalid_argument(
            "optional platform fields provided, but OS and Architecture are missing",
        ));
    }
    Ok(Some(Platform::new(&p.os, &p.architecture, &p.variant)))
}

/// What ListImages asks for.
pub fn list_query(request: ListImagesRequest) -> ListQuery {
    ListQuery {
        filters: request.filters,
        all: request.all,
        shared_size: request.shared_size,
    }
}

/// The image PutImage records.
pub fn record(request: PutImageRequest) -> Record {
    Record {
        config: request.config,
        tags: request.tags,
        digests: request.digests,
        layer_sizes: request.layer_sizes,
        content_size: request.content_size,
        tag_events: request.tag_events,
        action: request.action,
        event_ref: request.event_ref,
    }
}
