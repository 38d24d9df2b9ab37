//! Docker's delete conflicts: what stands in the way of deleting an image,
//! as a typed error (the cause of the FAILED_PRECONDITION a delete
//! answers), worded as Docker words it.

use imaged_common::Error;
use tonic::Code;

use crate::store::Image;

/// What stands in the way of deleting an image, in the order checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Hard: another image has it as parent.
    Child,
    /// Hard: a running container uses it.
    Running(String),
    /// Soft: it still has references.
    Referenced,
    /// Soft: a stopped container uses it.
    Stopped(String),
}

impl Conflict {
    pub(super) fn hard(&self) -> bool {
        matches!(self, Conflict::Child | Conflict::Running(_))
    }

    /// A "used" conflict: a container.
    pub(super) fn used(&self) -> bool {
        matches!(self, Conflict::Running(_) | Conflict::Stopped(_))
    }

    /// The error a delete of `image` answers.
    pub(super) fn error(&self, image: &Image) -> Error {
        DeleteConflict::Image {
            image: image.id.short().to_string(),
            conflict: self.clone(),
        }
        .into()
    }
}

/// A refused delete, typed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeleteConflict {
    /// The image (short ID) cannot go.
    #[error("{}", image_text(image, conflict))]
    Image { image: String, conflict: Conflict },
    /// The reference cannot go without force: its image's last reference,
    /// and a container uses the image.
    #[error(
        "conflict: unable to remove repository reference \"{reference}\" (must force) - container {} is using its referenced image {image}",
        short(container)
    )]
    Reference {
        reference: String,
        container: String,
        image: String,
    },
}

impl From<DeleteConflict> for Error {
    fn from(conflict: DeleteConflict) -> Self {
        Error::caused(Code::FailedPrecondition, conflict)
    }
}

fn image_text(image: &str, conflict: &Conflict) -> String {
    let tail = match conflict {
        Conflict::Child => "image has dependent child images".to_string(),
        Conflict::Running(c) => {
            format!("image is being used by running container {}", short(c))
        }
        Conflict::Referenced => "image is referenced in multiple repositories".to_string(),
        Conflict::Stopped(c) => {
            format!("image is being used by stopped container {}", short(c))
        }
    };
    let severity = if conflict.hard() {
        "cannot be forced"
    } else {
        "must be forced"
    };
    format!("conflict: unable to delete {image} ({severity}) - {tail}")
}

/// A container or image ID as Docker shows it: 12 hex characters.
pub(super) fn short(id: &str) -> &str {
    let id = id.split_once(':').map_or(id, |(_, hex)| hex);
    &id[..id.len().min(12)]
}
