//! Packing a layer directory in overlay form into a layer tar, the inverse
//! of `unpack`: whiteout devices become `.wh.NAME` entries, opaque
//! directories a `.wh..wh..opq` entry, hardlinked files link entries;
//! modes, owners, times and xattrs are kept. Entries are sorted, so the
//! same directory gives the same tar (and diffID).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use imaged_common::Error;
use tar::{EntryType, Header};

use crate::archive::whiteout;

/// Writes the tar of `dir` to `out`.
pub fn pack(dir: &Path, out: impl Write) -> Result<(), Error> {
    let mut tar = tar::Builder::new(out);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    pack_dir(&mut tar, dir, Path::new(""), &mut links)?;
    tar.into_inner()
        .map_err(crate::archive::unpack::classify)?
        .flush()
        .map_err(crate::archive::unpack::classify)?;
    Ok(())
}

fn pack_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), Error> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let path = root.join(&child);
        let meta = fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if whiteout::is_whiteout(&meta) {
            let hidden = rel.join(whiteout::whiteout_name(&name));
            let mut header = header(&meta, EntryType::Regular, 0);
            header.set_mode(0o600);
            append(tar, &mut header, &hidden, &[] as &[u8])?;
            continue;
        }
        pax(tar, &path, &meta)?;
        if kind.is_dir() {
            let mut header = header(&meta, EntryType::Directory, 0);
            append(tar, &mut header, &child, &[] as &[u8])?;
            if whiteout::is_opaque(&path) {
                let mut marker = header.clone();
                marker.set_entry_type(EntryType::Regular);
                marker.set_mode(0o600);
                append(
                    tar,
                    &mut marker,
                    &child.join(whiteout::OPAQUE_MARKER),
                    &[] as &[u8],
                )?;
            }
            pack_dir(tar, root, &child, links)?;
        } else if kind.is_symlink() {
            let mut header = header(&meta, EntryType::Symlink, 0);
            tar.append_link(&mut header, &child, fs::read_link(&path)?)
                .map_err(crate::archive::unpack::classify)?;
        } else if kind.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1
                && let Some(first) = links.get(&key)
            {
                let mut header = header(&meta, EntryType::Link, 0);
                tar.append_link(&mut header, &child, first)
                    .map_err(crate::archive::unpack::classify)?;
                continue;
            }
            if meta.nlink() > 1 {
                links.insert(key, child.clone());
            }
            let mut header = header(&meta, EntryType::Regular, meta.len());
            append(tar, &mut header, &child, fs::File::open(&path)?)?;
        } else {
            let kind = if kind.is_char_device() {
                EntryType::Char
            } else if kind.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            };
            let mut header = header(&meta, kind, 0);
            let dev = meta.rdev();
            header
                .set_device_major(libc::major(dev))
                .and_then(|()| header.set_device_minor(libc::minor(dev)))
                .map_err(crate::archive::unpack::classify)?;
            append(tar, &mut header, &child, &[] as &[u8])?;
        }
    }
    Ok(())
}

fn header(meta: &fs::Metadata, kind: EntryType, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header.set_mtime(meta.mtime().max(0) as u64);
    header
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut Header,
    path: &Path,
    data: impl std::io::Read,
) -> Result<(), Error> {
    tar.append_data(header, path, data)
        .map_err(crate::archive::unpack::classify)
}

/// One PAX header before the entry with what a plain header cannot hold:
/// its xattrs (but overlayfs' own) and a sub-second modification time.
fn pax<W: Write>(tar: &mut tar::Builder<W>, path: &Path, meta: &fs::Metadata) -> Result<(), Error> {
    let mut records = Vec::new();
    if meta.mtime_nsec() != 0 {
        let mtime = format!("{}.{:09}", meta.mtime(), meta.mtime_nsec());
        records.push(("mtime".to_string(), mtime.into_bytes()));
    }
    for name in xattr::list(path).into_iter().flatten() {
        if whiteout::is_overlay_xattr(&name) {
            continue;
        }
        let name = name.to_string_lossy().into_owned();
        if let Ok(Some(value)) = xattr::get(path, &name) {
            records.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    if !records.is_empty() {
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(crate::archive::unpack::classify)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_what_unpack_reads_back_the_same() {
        let src = tempfile::tempdir().unwrap();
        let dir = src.path();
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/conf"), b"conf").unwrap();
        fs::hard_link(dir.join("etc/conf"), dir.join("etc/alias")).unwrap();
        std::os::unix::fs::symlink("conf", dir.join("etc/link")).unwrap();
        crate::archive::beneath::Root::open(dir)
            .unwrap()
            .entry(Path::new("etc/gone"))
            .unwrap()
            .whiteout()
            .unwrap();
        fs::create_dir_all(dir.join("cache")).unwrap();
        xattr::set(dir.join("cache"), whiteout::OPAQUE_XATTR, b"y").unwrap();
        xattr::set(dir.join("etc/conf"), "user.note", b"kept").unwrap();
        let precise = filetime::FileTime::from_unix_time(1_700_000_000, 250_000_000);
        filetime::set_file_mtime(dir.join("etc/conf"), precise).unwrap();
        // A whiteout from long ago: its time must survive the round trip
        // (it once took the unpack's time, which failed when a second
        // boundary fell between the two).
        let long_ago = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_symlink_file_times(dir.join("etc/gone"), long_ago, long_ago).unwrap();

        let mut tar = Vec::new();
        pack(dir, &mut tar).unwrap();
        let names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"etc/.wh.gone".to_string()), "{names:?}");
        assert!(
            names.contains(&"cache/.wh..wh..opq".to_string()),
            "{names:?}"
        );

        let out = tempfile::tempdir().unwrap();
        let unpacked = crate::archive::unpack::unpack(
            tar.as_slice(),
            out.path(),
            crate::store::layers::Budget::UNLIMITED,
        )
        .unwrap();
        let again = tempfile::tempdir().unwrap();
        let mut tar2 = Vec::new();
        pack(out.path(), &mut tar2).unwrap();
        let unpacked2 = crate::archive::unpack::unpack(
            tar2.as_slice(),
            again.path(),
            crate::store::layers::Budget::UNLIMITED,
        )
        .unwrap();
        assert_eq!(unpacked.diff_id, unpacked2.diff_id, "packing is stable");
        let meta = fs::metadata(out.path().join("etc/alias")).unwrap();
        assert_eq!(
            meta.ino(),
            fs::metadata(out.path().join("etc/conf")).unwrap().ino()
        );
        assert_eq!(
            xattr::get(out.path().join("etc/conf"), "user.note").unwrap(),
            Some(b"kept".to_vec())
        );
        let conf = fs::metadata(out.path().join("etc/conf")).unwrap();
        assert_eq!(
            (conf.mtime(), conf.mtime_nsec()),
            (1_700_000_000, 250_000_000)
        );
    }
}
