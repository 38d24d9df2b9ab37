//! Unpacking one layer tar into its own directory, the overlay2 way.
//!
//! The `tar` crate (≥ 0.4.45, synchronous, run on a blocking thread) reads
//! the archive and writes files, directories, symlinks and hardlinks with
//! their modes, owners, times and xattrs, refusing any write that would land
//! outside the layer. This module adds what it leaves to the caller:
//! refusing `..` and absolute names outright, device nodes and FIFOs,
//! whiteouts in the form overlayfs reads (`.wh.NAME` becomes a 0/0
//! character device, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on
//! its directory), directory times restored after their children, and the
//! diffID: the sha256 of the uncompressed stream.

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;
use imaged_common::Error;
use imaged_model::Digest;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What unpacking learnt about the layer.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Bytes of regular files (Docker's DiffSize, hardlinks counted once).
    pub size: u64,
    /// Entries written (files, directories, links, whiteouts): the inodes
    /// the layer takes, for the CRI's ImageFsInfo.
    pub entries: u64,
    /// Bytes of the uncompressed tar (what `docker save` writes).
    pub tar_size: u64,
}

/// Unpacks the layer file at `path` into a new staging directory and keeps
/// the file as a blob, reading it once: its digest is computed as it is
/// unpacked. For layers that arrive as files (load, import, commit).
pub fn unpack_and_keep(
    content: &crate::content::ContentStore,
    layers: &crate::layers::LayerStore,
    path: &Path,
) -> Result<(Digest, Unpacked, crate::layers::Staging), Error> {
    let staging = layers.stage()?;
    let mut file = HashingReader::new(std::fs::File::open(path)?);
    let unpacked = unpack(&mut file, &staging.diff())?;
    io::copy(&mut file, &mut io::sink()).map_err(classify)?;
    let (blob, _) = file.finish()?;
    content.adopt(path, &blob)?;
    Ok((blob, unpacked, staging))
}

/// Unpacks the (gzip, zstd or uncompressed, detected from the first bytes)
/// layer tar read from `reader` into the empty directory `dest`.
/// Errors: INVALID_ARGUMENT for a malformed or unsafe archive,
/// RESOURCE_EXHAUSTED for a full disk.
pub fn unpack(reader: impl Read, dest: &Path) -> Result<Unpacked, Error> {
    let mut hashing = HashingReader::new(decompressed(reader)?);
    let (size, entries) = unpack_entries(&mut hashing, dest)?;
    // The tar reader stops at the end-of-archive blocks; the diffID covers
    // every byte of the stream.
    io::copy(&mut hashing, &mut io::sink()).map_err(classify)?;
    let (diff_id, tar_size) = hashing.finish()?;
    Ok(Unpacked {
        diff_id,
        size,
        entries,
        tar_size,
    })
}

fn unpack_entries(reader: &mut dyn Read, dest: &Path) -> Result<(u64, u64), Error> {
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(as_root);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);

    let mut size = 0u64;
    let mut entries = 0u64;
    let mut dir_times = Vec::new();
    for entry in archive.entries().map_err(classify)? {
        let mut entry = entry.map_err(classify)?;
        entries += 1;
        let raw = entry.path().map_err(classify)?.into_owned();
        let path = relative_path(&raw)?;
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue; // the layer root itself ("./")
        };
        let parent = dest.join(path.parent().unwrap_or(Path::new("")));
        if name == OPAQUE_MARKER {
            std::fs::create_dir_all(&parent).map_err(classify)?;
            set_opaque(&parent)?;
            continue;
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            continue; // AUFS hardlink bookkeeping, meaningless to overlay
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            std::fs::create_dir_all(&parent).map_err(classify)?;
            let target = parent.join(hidden);
            remove_existing(&target)?;
            make_node(&target, libc::S_IFCHR, 0, 0).map_err(classify)?;
            continue;
        }
        let mtime = precise_mtime(&mut entry);
        let header = entry.header();
        let kind = header.entry_type();
        match kind {
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let mode = header.mode().map_err(classify)?;
                let file_type = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
                let mtime = header.mtime().unwrap_or(0);
                std::fs::create_dir_all(&parent).map_err(classify)?;
                let target = dest.join(&path);
                remove_existing(&target)?;
                make_node(&target, file_type, libc::makedev(major, minor), mode)
                    .map_err(classify)?;
                if as_root {
                    std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32))
                        .map_err(classify)?;
                    std::fs::set_permissions(
                        &target,
                        std::os::unix::fs::PermissionsExt::from_mode(mode),
                    )
                    .map_err(classify)?;
                }
                let time = FileTime::from_unix_time(mtime as i64, 0);
                filetime::set_symlink_file_times(&target, time, time).map_err(classify)?;
                continue;
            }
            EntryType::Link | EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(classify)?
                    .ok_or_else(|| invalid(&raw, "link without a target"))?;
                if kind == EntryType::Link {
                    relative_path(&link)?;
                }
            }
            EntryType::Directory => {
                dir_times.push((dest.join(&path), mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                size += header.size().unwrap_or(0);
            }
            _ => {}
        }
        if !entry.unpack_in(dest).map_err(classify)? {
            return Err(invalid(&raw, "path escapes the layer"));
        }
        if kind != EntryType::Directory && kind != EntryType::Link {
            // The tar crate keeps whole seconds and turns 0 into 1; the
            // layer keeps what the archive says.
            filetime::set_symlink_file_times(dest.join(&path), mtime, mtime).map_err(classify)?;
        }
    }
    // Children changed their directories' times; put them back, deepest
    // first.
    for (dir, mtime) in dir_times.iter().rev() {
        filetime::set_symlink_file_times(dir, *mtime, *mtime).map_err(classify)?;
    }
    Ok((size, entries))
}

/// The entry's modification time with the sub-second part a PAX `mtime`
/// record carries (BuildKit writes them), else the header's seconds.
fn precise_mtime<R: Read>(entry: &mut tar::Entry<'_, R>) -> FileTime {
    if let Ok(Some(extensions)) = entry.pax_extensions() {
        for extension in extensions.flatten() {
            if extension.key() == Ok("mtime")
                && let Ok(value) = extension.value()
            {
                let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
                if let Ok(secs) = secs.parse::<i64>() {
                    let digits: String = frac.chars().take(9).collect();
                    let nanos = format!("{digits:0<9}").parse::<u32>().unwrap_or(0);
                    return FileTime::from_unix_time(secs, nanos);
                }
            }
        }
    }
    FileTime::from_unix_time(entry.header().mtime().unwrap_or(0) as i64, 0)
}

/// The entry name as a path inside the layer: `./` and empty parts are
/// dropped; `..` and absolute names are refused.
pub fn relative_path(raw: &Path) -> Result<PathBuf, Error> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid(raw, "path contains \"..\"")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(raw, "absolute path"));
            }
        }
    }
    Ok(out)
}

fn invalid(path: &Path, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "invalid layer tar: {}: {why}",
        path.to_string_lossy()
    ))
}

/// Removes what an earlier entry of the same layer left at `path`.
fn remove_existing(path: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(classify),
        Ok(_) => std::fs::remove_file(path).map_err(classify),
        Err(_) => Ok(()),
    }
}

pub(crate) fn make_node(
    path: &Path,
    file_type: libc::mode_t,
    dev: libc::dev_t,
    mode: u32,
) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c_path` is a valid NUL-terminated path for the whole call.
    let rc = unsafe { libc::mknod(c_path.as_ptr(), file_type | (mode & 0o7777), dev) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> Result<(), Error> {
    xattr::set(dir, "trusted.overlay.opaque", b"y").map_err(classify)
}

/// Sorts an unpacking failure: a full disk is the caller's limit, a fault
/// of our own filesystem is internal, anything else is a bad archive.
pub fn classify(err: io::Error) -> Error {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(current) = source {
        if let Some(io_err) = current.downcast_ref::<io::Error>()
            && let Some(code) = io_err.raw_os_error()
        {
            match code {
                libc::ENOSPC | libc::EDQUOT => {
                    return Error::ResourceExhausted(format!("no space left on device: {text}"));
                }
                libc::EIO | libc::EROFS | libc::EACCES | libc::EMFILE | libc::ENFILE => {
                    return Error::Internal(format!("unpacking layer: {text}"));
                }
                _ => {}
            }
        }
        source = current.source();
    }
    Error::InvalidArgument(format!("invalid layer tar: {text}"))
}

/// Hashes and counts what passes through: the diffID and size of the
/// uncompressed stream.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The digest and byte count of everything read so far.
    pub fn finish(self) -> Result<(Digest, u64), Error> {
        let digest = Digest::sha256_from_hex(&hex::encode(self.hasher.finalize()))?;
        Ok((digest, self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A reader of the layer tar inside `reader`, decompressing gzip or zstd
/// (detected from the first bytes) or passing a plain tar through.
pub fn decompressed<'a>(reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>, Error> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let magic = buffered.fill_buf().map_err(classify)?.to_vec();
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(classify)?)
    } else {
        Box::new(buffered)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A tar of raw entries: (name, type, link target, data). Names are
    /// written into the header as given, `..` and absolute ones included.
    fn raw_tar(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, link, data) in entries {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(data.len() as u64);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn refused(tar: &[u8]) -> (Error, tempfile::TempDir) {
        let outside = tempfile::tempdir().unwrap();
        let dest = outside.path().join("layer");
        std::fs::create_dir(&dest).unwrap();
        let err = unpack(tar, &dest).expect_err("an unsafe layer was accepted");
        (err, outside)
    }

    #[test]
    fn keeps_sub_second_and_zero_times() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("mtime", b"1700000000.123456789".as_slice())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        builder
            .append_data(&mut header, "precise", b"x".as_slice())
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder
            .append_data(&mut header, "epoch", b"y".as_slice())
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack(tar.as_slice(), dir.path()).unwrap();
        let precise = std::fs::metadata(dir.path().join("precise")).unwrap();
        assert_eq!(
            (precise.mtime(), precise.mtime_nsec()),
            (1_700_000_000, 123_456_789)
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("epoch")).unwrap().mtime(),
            0
        );
    }

    #[test]
    fn refuses_parent_and_absolute_names() {
        for name in ["../escape", "a/../../escape", "/etc/escape"] {
            let tar = raw_tar(&[(name, EntryType::Regular, "", b"x")]);
            let (err, outside) = refused(&tar);
            assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err}");
            assert!(!outside.path().join("escape").exists(), "{name}");
        }
    }

    #[test]
    fn refuses_writes_through_symlinks_and_links_outside() {
        let tar = raw_tar(&[
            ("evil", EntryType::Symlink, "..", b""),
            ("evil/escape", EntryType::Regular, "", b"x"),
        ]);
        let (err, outside) = refused(&tar);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(!outside.path().join("escape").exists());

        let secret = tempfile::NamedTempFile::new().unwrap();
        let target = secret.path().to_str().unwrap().trim_start_matches('/');
        let tar = raw_tar(&[(
            "link",
            EntryType::Link,
            &format!("../../../../../../{target}"),
            b"",
        )]);
        let (err, _outside) = refused(&tar);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn refuses_malformed_headers() {
        let mut tar = raw_tar(&[("file", EntryType::Regular, "", b"data")]);
        tar[148] ^= 0x55; // checksum field
        let (err, _outside) = refused(&tar);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn whiteouts_take_the_overlay_form_and_the_diff_id_covers_the_stream() {
        let tar = raw_tar(&[
            ("etc/", EntryType::Directory, "", b""),
            ("etc/.wh.motd", EntryType::Regular, "", b""),
            ("var/", EntryType::Directory, "", b""),
            ("var/.wh..wh..opq", EntryType::Regular, "", b""),
            ("var/kept", EntryType::Regular, "", b"kept"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let unpacked = unpack(gz.finish().unwrap().as_slice(), dir.path()).unwrap();
        assert_eq!(unpacked.diff_id, Digest::sha256_of(&tar));
        assert_eq!(unpacked.size, 4);
        let whiteout = std::fs::symlink_metadata(dir.path().join("etc/motd")).unwrap();
        assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
        assert!(!dir.path().join("etc/.wh.motd").exists());
        assert_eq!(
            xattr::get(dir.path().join("var"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(std::fs::read(dir.path().join("var/kept")).unwrap(), b"kept");
        let var = std::fs::metadata(dir.path().join("var")).unwrap();
        assert_eq!(var.mtime(), 1_700_000_000, "directory times restored last");
    }
}
