//! Layer tars in and out: unpacking a tar into a layer directory and
//! packing one back, the whiteout rules, applying a layer onto a plain
//! directory, compression, and the bounds and path rules that keep an
//! archive from reaching outside the directory it is unpacked in.

pub(crate) mod beneath;
pub(crate) mod compress;
pub(crate) mod merge;
pub(crate) mod pack;
pub(crate) mod sparse;
pub(crate) mod tar_limits;
pub(crate) mod unpack;
pub(crate) mod walk;
pub(crate) mod whiteout;
pub(crate) mod writers;
