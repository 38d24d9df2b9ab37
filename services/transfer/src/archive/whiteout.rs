//! The overlay whiteout rules, in one place (as containerd keeps them in
//! `pkg/archive`): how a layer tar says "deleted" and "replaced", and how
//! overlayfs stores the same on disk. Unpack reads the tar form into the
//! disk form, pack writes it back, merge and the container diff read the
//! disk form.
//!
//! | meaning | in a layer tar | on disk (overlayfs) |
//! | --- | --- | --- |
//! | `NAME` was deleted | an entry `.wh.NAME` | a 0/0 character device `NAME` |
//! | the directory hides what lies below | an entry `DIR/.wh..wh..opq` | the xattr `trusted.overlay.opaque=y` on `DIR` |
//! | AUFS hardlink bookkeeping | entries `.wh..wh.*` | nothing |

use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Prefix of a whiteout entry's name in a tar.
const PREFIX: &str = ".wh.";
/// Prefix of AUFS's own entries, which mean nothing to overlayfs.
const META_PREFIX: &str = ".wh..wh.";
/// The tar entry that makes its directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr by which overlayfs marks an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// overlayfs's own xattrs (opaque, redirect, metacopy, origin): only the
/// conversion above may set them; layer content never carries them.
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

/// What a tar entry's last name means.
#[derive(Debug, PartialEq, Eq)]
pub enum TarName<'a> {
    /// `.wh..wh..opq`: the directory it is in is opaque.
    Opaque,
    /// `.wh..wh.*`: AUFS bookkeeping, skipped.
    Meta,
    /// `.wh.NAME`: `NAME` (these bytes) is deleted.
    Whiteout(&'a [u8]),
    /// Any other name: a file of the layer.
    Plain,
}

/// Reads a tar entry's last name.
pub fn tar_name(name: &[u8]) -> TarName<'_> {
    if name == OPAQUE_MARKER.as_bytes() {
        TarName::Opaque
    } else if name.starts_with(META_PREFIX.as_bytes()) {
        TarName::Meta
    } else if let Some(hidden) = name.strip_prefix(PREFIX.as_bytes()) {
        TarName::Whiteout(hidden)
    } else {
        TarName::Plain
    }
}

/// The tar entry name that deletes `name`.
pub fn whiteout_name(name: &OsStr) -> OsString {
    let mut out = OsString::from(PREFIX);
    out.push(name);
    out
}

/// Whether an inode on disk is an overlay whiteout (a 0/0 character
/// device).
pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether the directory at `dir` is opaque.
pub fn is_opaque(dir: &Path) -> bool {
    xattr::get(dir, OPAQUE_XATTR)
        .ok()
        .flatten()
        .is_some_and(|v| v == b"y")
}

/// Whether an xattr name is one of overlayfs's own.
pub fn is_overlay_xattr(name: &OsStr) -> bool {
    name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_names_read_as_overlay_means_them() {
        assert_eq!(tar_name(b".wh..wh..opq"), TarName::Opaque);
        assert_eq!(tar_name(b".wh..wh.plnk"), TarName::Meta);
        assert_eq!(tar_name(b".wh.motd"), TarName::Whiteout(b"motd"));
        assert_eq!(tar_name(b".wh."), TarName::Whiteout(b""));
        assert_eq!(tar_name(b"motd"), TarName::Plain);
        assert_eq!(whiteout_name(OsStr::new("motd")), ".wh.motd");
        assert!(is_overlay_xattr(OsStr::new("trusted.overlay.redirect")));
        assert!(!is_overlay_xattr(OsStr::new("user.note")));
    }
}
