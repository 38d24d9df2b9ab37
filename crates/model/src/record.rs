//! Recording an image: what imaged-transfer hands imaged-metadata after a
//! pull, load, import or push, and what recording did; and a recorded
//! image as imaged-metadata hands it back for a push, commit or save.

/// An image imaged-transfer pulled, loaded, imported, pushed or made,
/// for imaged-metadata to record: what both sides of PutImage mean.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// The config, byte for byte (its digest is the image ID).
    pub config: Vec<u8>,
    /// Full references (registry/repo:tag) to point at the image.
    pub tags: Vec<String>,
    /// Full references with a digest (registry/repo@sha256:…).
    pub digests: Vec<String>,
    /// Each layer's size, bottom first.
    pub layer_sizes: Vec<i64>,
    /// The event to send: `pull`, `load`, `import` or `push`; none when
    /// empty.
    pub action: String,
    /// The name the event is about (what the user asked for).
    pub event_ref: String,
    /// Tag as TagImage does, with a `tag` event each (import).
    pub tag_events: bool,
    /// Bytes of the image as its registry holds it (pull); 0 otherwise.
    pub content_size: i64,
}

/// What recording did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    pub id: String,
    /// Whether a reference was created or moved (Docker's "Downloaded
    /// newer image").
    pub updated: bool,
    /// Tags taken from another image: (familiar tag, that image's ID).
    pub moved: Vec<MovedTag>,
}

/// A tag that moved from another image.
#[derive(Clone, Debug, PartialEq)]
pub struct MovedTag {
    pub tag: String,
    pub from_id: String,
}

/// A stored image with its config and references, as imaged-metadata
/// hands it back (for a push, a commit or a mount).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredImage {
    pub id: String,
    pub config: Vec<u8>,
    /// Its references, tags and digests apart (fully qualified).
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

/// One image of an export, as imaged-metadata resolved the names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportedImage {
    pub id: String,
    pub config: Vec<u8>,
    /// Familiar name:tag references to write for it.
    pub repo_tags: Vec<String>,
    /// The parent's ID, when the parent is exported too.
    pub parent: String,
}
