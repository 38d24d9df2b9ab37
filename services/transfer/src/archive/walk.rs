//! Reading a tree that someone else may be changing while it is read: a
//! container's upper directory, for commit, `Changes`, `LayerSize` and
//! containerd's usage.
//!
//! A process in the container can rename a directory away and put a
//! symlink (`x -> /`) in its place at any moment. A walk that joins paths
//! and hands them to the kernel would then read the host's `/` as if it
//! were the container's. So nothing here is opened by path: each entry is
//! opened from its directory's descriptor with `O_PATH | O_NOFOLLOW`, its
//! kind is read from that descriptor (`fstat`), and what is read next (a
//! directory's names, a file's bytes, a link's target, xattrs) is read
//! through that same descriptor. An entry is taken as it was when it was
//! opened: a directory swapped for a symlink a moment later is still read
//! as the directory that was there, and a symlink is recorded as a
//! symlink, never followed. The writing side is [`crate::archive::beneath`].

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags, Stat};

use crate::archive::whiteout;

/// A directory of the tree, open: its names are listed and its entries
/// opened relative to it.
pub struct Dir {
    fd: OwnedFd,
}

/// One entry, opened without following it, with its inode's metadata as
/// it was when opened.
pub struct Entry {
    /// `O_PATH`: names the inode, reads nothing by itself.
    fd: OwnedFd,
    stat: Stat,
}

impl Dir {
    /// Opens `path`, the top of the tree (a directory imaged made, so its
    /// own path is trusted; nothing below it is).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir { fd })
    }

    /// The directory `rel` below this one, every step a real directory
    /// (no symlink, no `..`); `None` when a step is missing or is not a
    /// directory.
    pub fn subdir(&self, rel: &Path) -> io::Result<Option<Dir>> {
        if rel.as_os_str().is_empty() {
            return Ok(Some(Dir {
                fd: self.fd.try_clone()?,
            }));
        }
        match rfs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(Dir { fd })),
            Err(
                rustix::io::Errno::NOENT
                | rustix::io::Errno::NOTDIR
                | rustix::io::Errno::LOOP
                | rustix::io::Errno::XDEV,
            ) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    /// The names in this directory (not `.` and `..`), sorted.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let listing = rfs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut names = Vec::new();
        for entry in rfs::Dir::new(listing)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The entry `name` (a plain name), as it is now; `None` when it is
    /// gone (removed since it was listed).
    pub fn entry(&self, name: &OsStr) -> io::Result<Option<Entry>> {
        match rfs::openat(
            &self.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let stat = rfs::fstat(&fd)?;
                Ok(Some(Entry { fd, stat }))
            }
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    /// The entry at `rel` (plain names, no step through a symlink);
    /// `None` when it or a directory on the way is gone.
    pub fn find(&self, rel: &Path) -> io::Result<Option<Entry>> {
        let Some(name) = rel.file_name() else {
            return Ok(None);
        };
        match self.subdir(rel.parent().unwrap_or(Path::new("")))? {
            Some(dir) => dir.entry(name),
            None => Ok(None),
        }
    }
}

impl Entry {
    /// The kind of inode, when it was opened.
    pub fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == FileType::Directory
    }

    pub fn is_file(&self) -> bool {
        self.kind() == FileType::RegularFile
    }

    pub fn is_symlink(&self) -> bool {
        self.kind() == FileType::Symlink
    }

    /// The permission bits and kind, as `st_mode`.
    pub fn mode(&self) -> u32 {
        self.stat.st_mode
    }

    pub fn uid(&self) -> u32 {
        self.stat.st_uid
    }

    pub fn gid(&self) -> u32 {
        self.stat.st_gid
    }

    /// The length of a file (of a symlink: its target's length).
    pub fn len(&self) -> u64 {
        self.stat.st_size as u64
    }

    /// The modification time, seconds and nanoseconds.
    pub fn mtime(&self) -> (i64, u32) {
        (self.stat.st_mtime, self.stat.st_mtime_nsec as u32)
    }

    /// A device node's number.
    pub fn rdev(&self) -> u64 {
        self.stat.st_rdev
    }

    /// Whether this is an overlay whiteout (a 0/0 character device).
    pub fn is_whiteout(&self) -> bool {
        self.kind() == FileType::CharacterDevice && self.rdev() == 0
    }

    /// Whether this is a directory overlayfs marked opaque.
    pub fn is_opaque(&self) -> bool {
        self.is_dir()
            && self
                .xattr(OsStr::new(whiteout::OPAQUE_XATTR))
                .is_some_and(|v| v == b"y")
    }

    /// This directory, to list and walk into.
    pub fn dir(&self) -> io::Result<Dir> {
        if !self.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// This regular file, opened for reading: the inode that was opened,
    /// whatever is at its name now.
    pub fn open_file(&self) -> io::Result<File> {
        if !self.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let fd = rfs::open(
            self.proc_path(),
            OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// A symlink's target, as stored.
    pub fn link_target(&self) -> io::Result<PathBuf> {
        let target = rfs::readlinkat(&self.fd, "", Vec::new())?;
        Ok(PathBuf::from(OsStr::from_bytes(target.to_bytes())))
    }

    /// The extended attributes of the inode (none read for a symlink).
    pub fn xattrs(&self) -> Vec<(OsString, Vec<u8>)> {
        if self.is_symlink() {
            return Vec::new();
        }
        let Some(names) = sized(|buf| rfs::listxattr(self.proc_path(), buf)) else {
            return Vec::new();
        };
        names
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty())
            .filter_map(|name| {
                let name = OsStr::from_bytes(name);
                Some((name.to_owned(), self.xattr(name)?))
            })
            .collect()
    }

    /// One extended attribute of the inode; `None` when it has none of
    /// that name. Read through `/proc/self/fd`, following only that magic
    /// link (the inode's own, never a name in the tree): an `O_PATH`
    /// descriptor cannot be read from directly.
    fn xattr(&self, name: &OsStr) -> Option<Vec<u8>> {
        sized(|buf| rfs::getxattr(self.proc_path(), name, buf))
    }

    /// `/proc/self/fd/<fd>`: the kernel jumps from it to the inode this
    /// entry opened, never through a name.
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_fd().as_raw_fd()))
    }
}

/// What `read` puts in a buffer: tried in 4 KiB, then in the 64 KiB an
/// xattr list or value may take at most.
fn sized(read: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> Option<Vec<u8>> {
    for size in [4096, 64 * 1024] {
        let mut buf = vec![0u8; size];
        match read(&mut buf) {
            Ok(length) => {
                buf.truncate(length);
                return Some(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_is_read_as_a_symlink_and_never_followed() {
        let top = tempfile::tempdir().unwrap();
        let upper = top.path().join("upper");
        let host = top.path().join("host");
        std::fs::create_dir_all(upper.join("d")).unwrap();
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("secret"), b"host").unwrap();
        std::os::unix::fs::symlink(&host, upper.join("x")).unwrap();
        std::os::unix::fs::symlink(&host, upper.join("d/y")).unwrap();
        let dir = Dir::open(&upper).unwrap();
        assert_eq!(dir.names().unwrap(), ["d", "x"]);
        let x = dir.entry(OsStr::new("x")).unwrap().unwrap();
        assert!(x.is_symlink());
        assert_eq!(x.link_target().unwrap(), host);
        assert!(x.dir().is_err());
        assert!(x.open_file().is_err());
        assert!(dir.subdir(Path::new("x")).unwrap().is_none());
        assert!(dir.find(Path::new("x/secret")).unwrap().is_none());
        assert!(dir.find(Path::new("d/y/secret")).unwrap().is_none());
        assert!(dir.find(Path::new("../host/secret")).unwrap().is_none());
        assert!(dir.find(Path::new("d/y")).unwrap().unwrap().is_symlink());
    }

    #[test]
    fn an_entry_is_the_inode_that_was_opened() {
        let top = tempfile::tempdir().unwrap();
        let upper = top.path().join("upper");
        std::fs::create_dir_all(upper.join("x")).unwrap();
        std::fs::write(upper.join("x/own"), b"mine").unwrap();
        std::fs::write(top.path().join("secret"), b"host").unwrap();
        let dir = Dir::open(&upper).unwrap();
        let x = dir.entry(OsStr::new("x")).unwrap().unwrap();
        // The directory is renamed away and a symlink out put in its place.
        std::fs::rename(upper.join("x"), upper.join("moved")).unwrap();
        std::os::unix::fs::symlink(top.path(), upper.join("x")).unwrap();
        let inside = x.dir().unwrap();
        assert_eq!(inside.names().unwrap(), ["own"]);
        let own = inside.entry(OsStr::new("own")).unwrap().unwrap();
        let mut text = String::new();
        io::Read::read_to_string(&mut own.open_file().unwrap(), &mut text).unwrap();
        assert_eq!(text, "mine");
    }
}
