//! Every path a layer touches, resolved inside the layer's directory.
//!
//! A layer may hold a symlink that points anywhere (`x -> /etc`). An entry
//! under it (`x/passwd`, `x/.wh.passwd`, a device node `x/null`) must never
//! reach the host. So nothing here joins paths and hands them to the
//! kernel: a directory is resolved by `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` from a descriptor of the layer's directory (the
//! kernel refuses any step, `..` or symlink, that leaves it), and each
//! change is then made with an `*at` call on that directory's descriptor
//! and the last name alone, which is never followed. This is what
//! containerd's `fs.RootPath` and runc's `securejoin` do in user space;
//! here the kernel does the walk.
//!
//! Every writer of a layer or container directory (unpack, whiteouts,
//! merge, commit diffs, load's staging) goes through [`Root`].

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};

/// A directory that every operation stays beneath.
pub struct Root {
    fd: OwnedFd,
}

/// One name inside a directory resolved beneath a [`Root`]: where a single
/// entry is created, changed or removed.
pub struct At {
    /// Shared by the entries of one directory ([`At::sibling`]).
    dir: Arc<OwnedFd>,
    name: OsString,
}

/// Which entry an [`At`] names, whatever path led to it: the inode of its
/// directory and its last name. Two paths that reach one entry through the
/// layer's symlinks have the same identity, which is how unpacking knows
/// that an entry must wait for a file still being written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    dev: u64,
    ino: u64,
    name: OsString,
}

impl Identity {
    /// The identity of `name` in the same directory.
    pub fn sibling(&self, name: &OsStr) -> Identity {
        Identity {
            dev: self.dev,
            ino: self.ino,
            name: name.to_owned(),
        }
    }

    /// The directory's (device, inode): files of one directory are created
    /// under its lock, one at a time, whoever creates them.
    pub fn directory(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// What kind of inode [`At::stat`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Other,
}

impl Root {
    /// Opens `path`, a directory imaged made (a staging or container
    /// directory); everything later is resolved beneath it.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// The existing directory `rel` (relative, `..`-free), resolved by the
    /// kernel without leaving the root.
    pub fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.fd.try_clone();
        }
        rfs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|errno| escape_error(errno.into(), rel))
    }

    /// The directory `rel`, creating what is missing (mode 0755, as Docker
    /// and containerd create implied parents). Each part is made inside the
    /// directory resolved before it, so a symlinked part cannot lead out.
    pub fn create_dirs(&self, rel: &Path) -> io::Result<OwnedFd> {
        match self.dir(rel) {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other,
        }
        let mut dir = self.fd.try_clone()?;
        let mut walked = PathBuf::new();
        for component in rel.components() {
            let Component::Normal(name) = component else {
                return Err(outside(rel));
            };
            walked.push(name);
            match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {}
                Err(errno) => return Err(errno.into()),
            }
            dir = self.dir(&walked)?;
        }
        Ok(dir)
    }

    /// Where the entry `rel` goes, creating its missing parents.
    pub fn entry(&self, rel: &Path) -> io::Result<At> {
        let (parent, name) = split(rel)?;
        Ok(At {
            dir: Arc::new(self.create_dirs(parent)?),
            name: name.to_owned(),
        })
    }

    /// The entry `rel` whose parent must already exist (a hardlink's
    /// source, a directory whose times are restored).
    pub fn existing(&self, rel: &Path) -> io::Result<At> {
        let (parent, name) = split(rel)?;
        Ok(At {
            dir: Arc::new(self.dir(parent)?),
            name: name.to_owned(),
        })
    }
}

impl At {
    /// The entry `name` (a plain name) in this entry's directory, as
    /// resolved for this one: for a run of entries in one directory.
    pub fn sibling(&self, name: &OsStr) -> At {
        At {
            dir: Arc::clone(&self.dir),
            name: name.to_owned(),
        }
    }

    /// This entry's [`Identity`].
    pub fn identity(&self) -> io::Result<Identity> {
        let stat = rfs::fstat(&self.dir)?;
        Ok(Identity {
            dev: stat.st_dev,
            ino: stat.st_ino,
            name: self.name.clone(),
        })
    }

    /// The inode at this name, not following a symlink; `None` when absent.
    pub fn stat(&self) -> io::Result<Option<Kind>> {
        match rfs::statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(
                if rfs::FileType::from_raw_mode(stat.st_mode) == rfs::FileType::Directory {
                    Kind::Dir
                } else {
                    Kind::Other
                },
            )),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Removes whatever is at this name: a file, a symlink (not what it
    /// points to) or a whole directory tree. Absent is fine.
    pub fn remove(&self) -> io::Result<()> {
        match self.stat()? {
            None => Ok(()),
            Some(Kind::Other) => Ok(rfs::unlinkat(&self.dir, &self.name, AtFlags::empty())?),
            // std's remove_dir_all opens each level with O_NOFOLLOW and
            // works through descriptors; the path it starts from is the
            // descriptor of our resolved parent plus one plain name.
            Some(Kind::Dir) => std::fs::remove_dir_all(self.proc_path()),
        }
    }

    /// Makes a directory (its mode is set afterwards by the caller).
    pub fn mkdir(&self) -> io::Result<()> {
        Ok(rfs::mkdirat(
            &self.dir,
            &self.name,
            Mode::from_raw_mode(0o700),
        )?)
    }

    /// Creates a new regular file, refusing to open anything that exists
    /// (a symlink planted there included).
    pub fn create_file(&self) -> io::Result<File> {
        let fd = rfs::openat(
            &self.dir,
            &self.name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Opens the directory at this name for its xattrs and times; a
    /// symlink is refused.
    pub fn open_dir(&self) -> io::Result<File> {
        let fd = rfs::openat(
            &self.dir,
            &self.name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Makes a symlink holding `target`, which is stored, never followed.
    pub fn symlink(&self, target: &Path) -> io::Result<()> {
        Ok(rfs::symlinkat(target, &self.dir, &self.name)?)
    }

    /// Makes this name a hardlink of `source` (itself, never what a
    /// symlink there points to).
    pub fn hardlink_to(&self, source: &At) -> io::Result<()> {
        Ok(rfs::linkat(
            &source.dir,
            &source.name,
            &self.dir,
            &self.name,
            AtFlags::empty(),
        )?)
    }

    /// Makes a device node or FIFO: `kind` is `S_IFCHR`, `S_IFBLK` or
    /// `S_IFIFO`.
    pub fn mknod(&self, kind: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
        let file_type = rfs::FileType::from_raw_mode(kind);
        Ok(rfs::mknodat(
            &self.dir,
            &self.name,
            file_type,
            Mode::from_raw_mode(0o600),
            rfs::makedev(major, minor),
        )?)
    }

    /// Makes the 0/0 character device by which overlayfs hides a name.
    pub fn whiteout(&self) -> io::Result<()> {
        self.mknod(libc::S_IFCHR, 0, 0)
    }

    /// Sets the owner of the inode itself (a symlink included).
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        Ok(rfs::chownat(
            &self.dir,
            &self.name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets the permission bits. Only for inodes this process just made
    /// (never a symlink: Linux has no lchmod).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        Ok(rfs::chmodat(
            &self.dir,
            &self.name,
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )?)
    }

    /// Sets access and modification times of the inode itself.
    pub fn set_times(&self, secs: i64, nanos: u32) -> io::Result<()> {
        Ok(rfs::utimensat(
            &self.dir,
            &self.name,
            &timestamps(secs, nanos),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets one extended attribute on the inode itself.
    pub fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()> {
        Ok(rfs::lsetxattr(
            self.proc_path(),
            name,
            value,
            rfs::XattrFlags::empty(),
        )?)
    }

    /// `/proc/self/fd/<parent>/<name>`: the kernel follows the descriptor's
    /// link to the directory we resolved, then looks up one plain name.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_fd().as_raw_fd())).join(&self.name)
    }
}

/// Splits `rel` into its parent and a plain last name.
fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match rel.components().next_back() {
        Some(Component::Normal(name)) => Ok((rel.parent().unwrap_or(Path::new("")), name)),
        _ => Err(outside(rel)),
    }
}

fn outside(rel: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: not a plain path inside the layer",
            quote(rel.as_os_str())
        ),
    )
}

/// Names the kernel's refusals: a resolution that would leave the root is
/// EXDEV, one through a magic link or too many symlinks is ELOOP.
fn escape_error(err: io::Error, rel: &Path) -> io::Error {
    match err.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: leads outside the layer through a symlink",
                quote(rel.as_os_str())
            ),
        ),
        _ => err,
    }
}

/// A path from the input as it may appear in an error: at most 200 bytes,
/// control and non-UTF-8 bytes escaped.
pub fn quote(raw: &OsStr) -> String {
    let bytes = raw.as_bytes();
    let shown = &bytes[..bytes.len().min(200)];
    let mut out: String = shown.escape_ascii().to_string();
    if bytes.len() > shown.len() {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    format!("\"{out}\"")
}

/// Access and modification times both set to `secs`.`nanos`, as a layer
/// gives an entry's one mtime.
pub fn timestamps(secs: i64, nanos: u32) -> rfs::Timestamps {
    let time = rfs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos as _,
    };
    rfs::Timestamps {
        last_access: time,
        last_modification: time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let layer = top.path().join("layer");
        let host = top.path().join("host");
        std::fs::create_dir(&layer).unwrap();
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(&host, layer.join("x")).unwrap();
        std::os::unix::fs::symlink("../host", layer.join("up")).unwrap();
        (top, layer, host)
    }

    #[test]
    fn nothing_reaches_through_a_symlink_out_of_the_root() {
        let (_top, layer, host) = setup();
        let root = Root::open(&layer).unwrap();
        for link in ["x", "up"] {
            let rel = Path::new(link).join("victim");
            assert!(root.entry(&rel).is_err(), "{link}");
            assert!(root.existing(&rel).is_err(), "{link}");
            assert!(root.create_dirs(&Path::new(link).join("new")).is_err());
        }
        assert!(root.entry(Path::new("../victim")).is_err());
        assert_eq!(std::fs::read(host.join("victim")).unwrap(), b"keep");
        assert!(!host.join("new").exists());
    }

    #[test]
    fn removing_a_symlinked_name_removes_the_link_only() {
        let (_top, layer, host) = setup();
        let root = Root::open(&layer).unwrap();
        root.entry(Path::new("x")).unwrap().remove().unwrap();
        assert!(!layer.join("x").exists());
        assert_eq!(std::fs::read(host.join("victim")).unwrap(), b"keep");
    }

    #[test]
    fn parents_inside_are_created_and_followed() {
        let (_top, layer, _host) = setup();
        let root = Root::open(&layer).unwrap();
        root.entry(Path::new("a/b/c")).unwrap().mkdir().unwrap();
        std::os::unix::fs::symlink("a/b", layer.join("inner")).unwrap();
        let file = root.entry(Path::new("inner/c/f")).unwrap();
        std::io::Write::write_all(&mut file.create_file().unwrap(), b"x").unwrap();
        assert_eq!(std::fs::read(layer.join("a/b/c/f")).unwrap(), b"x");
    }
}
