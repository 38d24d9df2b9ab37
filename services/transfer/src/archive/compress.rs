//! Layer blobs as a push sends them: gzip, as Docker's schema 2 manifests
//! name them. A layer that came as gzip is pushed as it is stored, so its
//! digest stays the registry's; one that came uncompressed (import, load,
//! commit) or as zstd is compressed once into the content store, and the
//! layer store remembers the result ([`crate::store::layers::Layer::gzip`]) so a
//! later push sends the same bytes, or skips them.

use std::io::{self, Read};

use flate2::Compression;
use flate2::write::GzEncoder;
use imaged_common::Error;
use imaged_model::Digest;
use imaged_model::media_type::{OCI_LAYER_GZIP, oci_layer_for};

use crate::archive::unpack::decompressed;
use crate::store::content::ContentStore;

/// Whether the stored blob `digest` is gzip, from its first bytes (the
/// one magic-number rule, `media_type::oci_layer_for`).
pub fn is_gzip(content: &ContentStore, digest: &Digest) -> Result<bool, Error> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(content.path(digest))?;
    let n = file.read(&mut magic)?;
    Ok(oci_layer_for(&magic[..n]) == OCI_LAYER_GZIP)
}

/// Writes the gzip of the layer tar inside the stored blob `source` (plain,
/// gzip or zstd) into the content store, streaming; answers its digest and
/// size. Blocking. The same input always gives the same bytes (no name
/// or time in the gzip header), so two pushes that race store one blob.
pub fn gzip_into_store(content: &ContentStore, source: &Digest) -> Result<(Digest, u64), Error> {
    let file = std::fs::File::open(content.path(source))?;
    let mut tar = decompressed(file)?;
    let mut encoder = GzEncoder::new(content.new_blob()?, Compression::default());
    io::copy(&mut tar, &mut encoder)?;
    encoder.finish()?.commit(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_plain_or_zstd_layer_becomes_the_same_gzip_once() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path()).unwrap();
        let tar = tar_of("etc/hostname", &b"imaged\n".repeat(1000));
        let plain = Digest::sha256_of(&tar);
        content.write(&plain, &tar).unwrap();
        let zstd = zstd::encode_all(tar.as_slice(), 3).unwrap();
        let zstd_digest = Digest::sha256_of(&zstd);
        content.write(&zstd_digest, &zstd).unwrap();
        assert!(!is_gzip(&content, &plain).unwrap());

        let (gzip, size) = gzip_into_store(&content, &plain).unwrap();
        assert!(is_gzip(&content, &gzip).unwrap());
        let stored = content.read(&gzip).unwrap();
        assert_eq!(stored.len() as u64, size);
        assert_eq!(Digest::sha256_of(&stored), gzip, "stored under its digest");
        assert!(
            size < tar.len() as u64 / 10,
            "{size} bytes for {}",
            tar.len()
        );
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(stored.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, tar, "the gzip holds the layer tar itself");

        let (again, _) = gzip_into_store(&content, &zstd_digest).unwrap();
        assert_eq!(again, gzip, "same tar, same bytes");
        assert!(
            content.list().unwrap().len() == 3,
            "plain, zstd and one gzip; no temporary file left"
        );
    }
}
