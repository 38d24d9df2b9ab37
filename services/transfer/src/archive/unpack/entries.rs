//! The tar stage of an unpack: each entry of the layer made in its
//! directory, beneath it ([`Root`]), in the overlay form, with its owner,
//! mode, xattrs and times; small files handed to [`Writers`].

use super::*;

/// Unpacks every entry into `dest`; small regular files are written by
/// [`Writers`] while the tar is read on.
pub(super) fn unpack_entries(
    reader: &mut dyn Read,
    dest: &Path,
    apparent: u64,
) -> Result<(u64, u64), Error> {
    let root = Root::open(dest).map_err(classify)?;
    let mut writers = Writers::new(write_file);
    let unpacked = unpack_each(reader, dest, apparent, &root, &mut writers);
    // Every file handed out is written (or has failed) before directory
    // times are restored, and before the caller keeps or removes `dest`.
    let written = writers.finish();
    let (size, entries, dir_times) = unpacked?;
    written?;
    // Children changed their directories' times; put them back, deepest
    // first. A directory a later entry removed is skipped.
    for (dir, (secs, nanos)) in dir_times.iter().rev() {
        if let Ok(at) = root.existing(dir)
            && at.stat().ok().flatten() == Some(Kind::Dir)
        {
            at.set_times(*secs, *nanos).map_err(classify)?;
        }
    }
    Ok((size, entries))
}

/// Directories and the times to give them once their children are made.
type DirTimes = Vec<(PathBuf, (i64, u32))>;

fn unpack_each(
    reader: &mut dyn Read,
    dest: &Path,
    apparent: u64,
    root: &Root,
    writers: &mut Writers,
) -> Result<(u64, u64, DirTimes), Error> {
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut archive = tar::Archive::new(reader);
    let mut size = 0u64;
    let mut entries = 0u64;
    let mut dir_times = Vec::new();
    // The directory of the last regular file, resolved: the next files of
    // that directory are made in it without resolving it again. Forgotten
    // at any other entry, and when making room for a file removed
    // something: only those can change where a path leads.
    let mut last_dir: Option<(PathBuf, At, Identity)> = None;
    for entry in archive.entries().map_err(classify)? {
        let mut entry = entry.map_err(classify)?;
        let raw = entry.path().map_err(classify)?.into_owned();
        // A PAX sparse file is named by its records, not its header.
        let pax_sparse = sparse::pax_sparse(&mut entry).map_err(|e| classify_entry(&raw, e))?;
        let raw = match &pax_sparse {
            Some(found) => PathBuf::from(OsStr::from_bytes(&found.name)),
            None => raw,
        };
        let path = relative_path(&raw)?;
        let Some(name) = path.file_name().map(|n| n.as_bytes().to_vec()) else {
            continue; // the layer root itself ("./")
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        let refuse = |err: io::Error| classify_entry(&raw, err);
        let kind = entry.header().entry_type();
        let tar_name = whiteout::tar_name(&name);
        let is_file = tar_name == whiteout::TarName::Plain
            && matches!(
                kind,
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
            );
        if !(is_file && last_dir.as_ref().is_some_and(|(dir, _, _)| dir == parent)) {
            last_dir = None;
        }
        let hidden = match tar_name {
            whiteout::TarName::Plain => None,
            whiteout::TarName::Meta => continue, // meaningless to overlay
            whiteout::TarName::Whiteout(hidden) => Some(hidden),
            whiteout::TarName::Opaque => {
                root.create_dirs(parent).map_err(refuse)?;
                let dir = if parent.as_os_str().is_empty() {
                    std::fs::File::open(dest).map_err(classify)?
                } else {
                    root.existing(parent)
                        .and_then(|at| at.open_dir())
                        .map_err(refuse)?
                };
                xattr::FileExt::set_xattr(&dir, whiteout::OPAQUE_XATTR, b"y").map_err(refuse)?;
                entries += 1;
                continue;
            }
        };
        if let Some(hidden) = hidden {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(invalid(&raw, "whiteout of no plain name"));
            }
            let at = root
                .entry(&parent.join(OsStr::from_bytes(hidden)))
                .map_err(refuse)?;
            let identity = at.identity().map_err(refuse)?;
            clear(&at, &identity, writers, false, &raw)?;
            at.whiteout().map_err(refuse)?;
            // The whiteout keeps its entry's time, so packing the layer
            // again gives the same tar (and diffID).
            at.set_times(entry.header().mtime().unwrap_or(0) as i64, 0)
                .map_err(refuse)?;
            entries += 1;
            continue;
        }
        let file_name = OsStr::from_bytes(&name);
        let (at, identity) = match &last_dir {
            Some((_, dir, in_dir)) => (dir.sibling(file_name), in_dir.sibling(file_name)),
            None => {
                let at = root.entry(&path).map_err(refuse)?;
                let identity = at.identity().map_err(refuse)?;
                (at, identity)
            }
        };
        // A later entry replaces an earlier one of the same name, except
        // that a directory over a directory keeps what is in it (Docker).
        let found = clear(&at, &identity, writers, kind == EntryType::Directory, &raw)?;
        if !is_file || found {
            last_dir = None;
        } else if last_dir.is_none() {
            last_dir = Some((
                parent.to_path_buf(),
                at.sibling(file_name),
                identity.clone(),
            ));
        }
        let extensions = Extensions::read(&mut entry, &raw)?;
        let header = entry.header();
        let mode = header.mode().map_err(classify)?;
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let meta = Meta {
            mode,
            owner: as_root.then_some((uid as u32, gid as u32)),
            xattrs: extensions.xattrs,
            mtime: extensions.mtime,
        };
        let apparent_size = pax_sparse.as_ref().map_or(entry.size(), |s| s.real_size);
        if is_file && size.saturating_add(apparent_size) > apparent {
            return Err(Error::resource_exhausted(format!(
                "{}: the layer's files are larger than the {apparent} bytes a layer may take",
                quote(raw.as_os_str())
            )));
        }
        // A sparse file is never read whole: its holes would cost reading.
        if is_file
            && kind != EntryType::GNUSparse
            && pax_sparse.is_none()
            && entry.size() <= MAX_SMALL_FILE
        {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(classify)?;
            size += data.len() as u64;
            entries += 1;
            writers.submit(at, identity, data, meta, raw)?;
            continue;
        }
        // Whether the entry still needs its owner, mode, xattrs and times,
        // set by name after the match.
        let mut settle_by_name = true;
        match kind {
            EntryType::Directory => {
                if at.stat().map_err(refuse)?.is_none() {
                    at.mkdir().map_err(refuse)?;
                }
                dir_times.push((path.clone(), meta.mtime));
            }
            EntryType::GNUSparse => {
                // Its holes are skipped in one step each, from its map.
                let file = sparse::write_gnu_sparse(&mut entry, &at).map_err(classify)?;
                size += entry.size();
                settle(&file, kind, &meta).map_err(refuse)?;
                settle_by_name = false; // settled through its descriptor
            }
            EntryType::Regular | EntryType::Continuous if pax_sparse.is_some() => {
                let found = pax_sparse.as_ref().expect("matched as sparse");
                let mut file = at.create_file().map_err(refuse)?;
                let stored = entry.size();
                sparse::write_pax_sparse(&mut entry, stored, found, &mut file).map_err(refuse)?;
                size += found.real_size;
                settle(&file, kind, &meta).map_err(refuse)?;
                settle_by_name = false; // settled through its descriptor
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut file = at.create_file().map_err(refuse)?;
                size += sparse::write_sparse(&mut entry, &mut file).map_err(classify)?;
                settle(&file, kind, &meta).map_err(refuse)?;
                settle_by_name = false; // settled through its descriptor
            }
            EntryType::Symlink => {
                let link = link_name(&mut entry, &raw)?;
                at.symlink(&link).map_err(refuse)?;
                // Docker's layer size counts a symlink as its lstat size:
                // the bytes of its target.
                size += link.as_os_str().len() as u64;
            }
            EntryType::Link => {
                let link = relative_path(&link_name(&mut entry, &raw)?)?;
                let source = root.existing(&link).map_err(refuse)?;
                // The source may be a file a writer has not made yet.
                writers.wait_for(&source.identity().map_err(refuse)?)?;
                at.hardlink_to(&source).map_err(refuse)?;
                settle_by_name = false; // the inode is the source's
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                at.mknod(file_type, major, minor).map_err(refuse)?;
            }
            // PAX global headers, GNU volume labels and the like carry no
            // file.
            _ => continue,
        }
        entries += 1;
        if settle_by_name {
            settle(&at, kind, &meta).map_err(refuse)?;
        }
    }
    Ok((size, entries, dir_times))
}

/// Makes room for the entry `raw` at `at` (named `identity`): waits for
/// a pending file of that name, then removes what is there, unless
/// `keep_dir` and it is a directory. Removing a directory waits for every
/// pending file, which may be in it. Answers whether something was there.
fn clear(
    at: &At,
    identity: &Identity,
    writers: &mut Writers,
    keep_dir: bool,
    raw: &Path,
) -> Result<bool, Error> {
    let refuse = |err: io::Error| classify_entry(raw, err);
    writers.wait_for(identity)?;
    match at.stat().map_err(refuse)? {
        Some(Kind::Dir) if keep_dir => {}
        Some(Kind::Dir) => {
            writers.wait_all()?;
            at.remove().map_err(refuse)?;
        }
        Some(Kind::Other) => at.remove().map_err(refuse)?,
        None => return Ok(false),
    }
    Ok(true)
}

/// Creates the regular file `at` with `data` and its metadata: what a
/// writer thread does for each small file.
fn write_file(at: &At, data: &[u8], meta: &Meta, raw: &Path) -> Result<(), Error> {
    let refuse = |err: io::Error| classify_entry(raw, err);
    let mut file = at.create_file().map_err(refuse)?;
    sparse::write_sparse_bytes(data, &mut file).map_err(classify)?;
    settle(&file, EntryType::Regular, meta).map_err(refuse)
}

/// An inode given its owner, mode, xattrs and times: by name, beneath the
/// layer's root ([`At`]), or through the descriptor of a regular file this
/// process just made and still holds open, with no lookup of its name.
trait Inode {
    fn chown(&self, uid: u32, gid: u32) -> io::Result<()>;
    fn chmod(&self, mode: u32) -> io::Result<()>;
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()>;
    fn set_times(&self, secs: i64, nanos: u32) -> io::Result<()>;
}

impl Inode for At {
    fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        At::chown(self, uid, gid)
    }
    fn chmod(&self, mode: u32) -> io::Result<()> {
        At::chmod(self, mode)
    }
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()> {
        At::set_xattr(self, name, value)
    }
    fn set_times(&self, secs: i64, nanos: u32) -> io::Result<()> {
        At::set_times(self, secs, nanos)
    }
}

impl Inode for std::fs::File {
    fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(uid),
            rustix::fs::Gid::from_raw(gid),
        );
        Ok(rustix::fs::fchown(self, Some(uid), Some(gid))?)
    }
    fn chmod(&self, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::fchmod(
            self,
            rustix::fs::Mode::from_raw_mode(mode & 0o7777),
        )?)
    }
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()> {
        Ok(rustix::fs::fsetxattr(
            self,
            name,
            value,
            rustix::fs::XattrFlags::empty(),
        )?)
    }
    fn set_times(&self, secs: i64, nanos: u32) -> io::Result<()> {
        Ok(rustix::fs::futimens(
            self,
            &crate::archive::beneath::timestamps(secs, nanos),
        )?)
    }
}

/// Gives an inode this process made its owner, mode, xattrs and (but for
/// a directory, whose children change it still) its times.
fn settle(inode: &impl Inode, kind: EntryType, meta: &Meta) -> io::Result<()> {
    if let Some((uid, gid)) = meta.owner {
        inode.chown(uid, gid)?;
    }
    if kind != EntryType::Symlink {
        // After chown, which clears set-id bits.
        inode.chmod(meta.mode)?;
    }
    for (name, value) in &meta.xattrs {
        inode.set_xattr(name, value)?;
    }
    if kind != EntryType::Directory {
        let (secs, nanos) = meta.mtime;
        inode.set_times(secs, nanos)?;
    }
    Ok(())
}

fn link_name<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &Path) -> Result<PathBuf, Error> {
    let link = entry
        .link_name()
        .map_err(classify)?
        .ok_or_else(|| invalid(raw, "link without a target"))?
        .into_owned();
    if link.as_os_str().len() > MAX_PATH {
        return Err(invalid(raw, "link target too long"));
    }
    Ok(link)
}

/// What an entry's PAX records add: the precise modification time and the
/// extended attributes to keep.
struct Extensions {
    mtime: (i64, u32),
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Extensions {
    /// Reads the entry's PAX records. overlayfs's own attributes
    /// (`trusted.overlay.*`: redirects, opaque markers, metacopy) are
    /// dropped: only imaged's conversion of whiteouts may set them.
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &Path) -> Result<Extensions, Error> {
        let mut mtime = (entry.header().mtime().unwrap_or(0) as i64, 0);
        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions().map_err(classify)? {
            for record in records {
                let record = record.map_err(classify)?;
                let Ok(key) = record.key() else { continue };
                if key == "mtime" {
                    if let Some(precise) = record.value().ok().and_then(parse_pax_time) {
                        mtime = precise;
                    }
                } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if whiteout::is_overlay_xattr(name.as_ref()) {
                        tracing::debug!(path = %raw.display(), name, "dropping an overlayfs attribute from layer content");
                        continue;
                    }
                    xattrs.push((OsString::from(name), record.value_bytes().to_vec()));
                }
            }
        }
        Ok(Extensions { mtime, xattrs })
    }
}

/// A PAX time (`1700000000.123456789`) as seconds and nanoseconds.
fn parse_pax_time(value: &str) -> Option<(i64, u32)> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs = secs.parse::<i64>().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = format!("{digits:0<9}").parse::<u32>().unwrap_or(0);
    Some((secs, nanos))
}
