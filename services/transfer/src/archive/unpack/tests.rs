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
    let err = unpack(tar, &dest, Budget::UNLIMITED).expect_err("an unsafe layer was accepted");
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
    unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
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
        assert!(err.is(tonic::Code::InvalidArgument), "{name}: {err}");
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
    assert!(err.is(tonic::Code::InvalidArgument), "{err}");
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
    assert!(err.is(tonic::Code::InvalidArgument), "{err}");
}

#[test]
fn refuses_malformed_headers() {
    let mut tar = raw_tar(&[("file", EntryType::Regular, "", b"data")]);
    tar[148] ^= 0x55; // checksum field
    let (err, _outside) = refused(&tar);
    assert!(err.is(tonic::Code::InvalidArgument), "{err}");
}

#[test]
fn size_counts_files_once_and_symlinks_by_their_target_as_docker() {
    let tar = raw_tar(&[
        ("bin/", EntryType::Directory, "", b""),
        ("bin/busybox", EntryType::Regular, "", b"12345678"),
        ("bin/ls", EntryType::Link, "bin/busybox", b""),
        ("bin/sh", EntryType::Symlink, "busybox", b""),
        ("etc/", EntryType::Directory, "", b""),
        ("etc/.wh.motd", EntryType::Regular, "", b""),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let unpacked = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
    // The file once (its hardlink is the same inode), the symlink as
    // the 7 bytes of "busybox", directories and whiteouts as nothing:
    // what Docker's overlay2 DiffSize sums over lstat.
    assert_eq!(unpacked.size, 8 + 7);
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
    let unpacked = unpack(
        gz.finish().unwrap().as_slice(),
        dir.path(),
        Budget::UNLIMITED,
    )
    .unwrap();
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

/// A layer whose first entry is a symlink to a host directory, then an
/// entry of each kind under it: every one is refused and the host
/// directory stays as it was.
#[test]
fn nothing_under_a_symlink_out_of_the_layer_touches_the_host() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("victim"), b"keep").unwrap();
    std::fs::create_dir(host.path().join("tree")).unwrap();
    std::fs::write(host.path().join("tree/leaf"), b"leaf").unwrap();
    let target = host.path().to_str().unwrap();
    let under: [(&str, EntryType); 8] = [
        ("x/.wh.victim", EntryType::Regular),
        ("x/.wh.tree", EntryType::Regular),
        ("x/.wh..wh..opq", EntryType::Regular),
        ("x/null", EntryType::Char),
        ("x/disk", EntryType::Block),
        ("x/pipe", EntryType::Fifo),
        ("x/dir/", EntryType::Directory),
        ("x/file", EntryType::Regular),
    ];
    for (name, kind) in under {
        let tar = raw_tar(&[
            ("x", EntryType::Symlink, target, b""),
            (name, kind, "", b""),
        ]);
        let (err, _layer) = refused(&tar);
        assert!(err.is(tonic::Code::InvalidArgument), "{name}: {err}");
        assert!(
            err.to_string().contains("outside the layer"),
            "{name}: {err}"
        );
        let mut left: Vec<_> = std::fs::read_dir(host.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["tree", "victim"], "{name}");
        assert_eq!(std::fs::read(host.path().join("victim")).unwrap(), b"keep");
        assert_eq!(
            std::fs::read(host.path().join("tree/leaf")).unwrap(),
            b"leaf"
        );
        assert_eq!(
            xattr::get(host.path(), whiteout::OPAQUE_XATTR).unwrap(),
            None,
            "{name}"
        );
    }
    // A whiteout whose name walks up, through a symlinked parent or not.
    for name in ["a/.wh...", "a/.wh..", ".wh.."] {
        let tar = raw_tar(&[
            ("a", EntryType::Symlink, target, b""),
            (name, EntryType::Regular, "", b""),
        ]);
        let (err, _layer) = refused(&tar);
        assert!(err.is(tonic::Code::InvalidArgument), "{name}: {err}");
        assert!(host.path().join("tree/leaf").exists(), "{name}");
    }
}

#[test]
fn a_later_entry_replaces_an_earlier_one_of_another_kind() {
    let tar = raw_tar(&[
        ("a", EntryType::Regular, "", b"file"),
        ("a/", EntryType::Directory, "", b""),
        ("a/inner", EntryType::Regular, "", b"in"),
        ("b/", EntryType::Directory, "", b""),
        ("b/child", EntryType::Regular, "", b"c"),
        ("b", EntryType::Regular, "", b"now a file"),
        ("c", EntryType::Symlink, "/etc", b""),
        ("c/", EntryType::Directory, "", b""),
    ]);
    let dir = tempfile::tempdir().unwrap();
    unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a/inner")).unwrap(), b"in");
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"now a file");
    assert!(
        std::fs::symlink_metadata(dir.path().join("c"))
            .unwrap()
            .is_dir()
    );
}

#[test]
fn files_written_side_by_side_keep_the_order_of_the_tar() {
    // Small files go to writer threads; every later entry that touches
    // one of them (a hardlink, a replacement through a symlinked
    // directory, a whiteout, a directory tree replaced by a file) must
    // see it written, as a one-thread unpack would.
    let mut entries: Vec<(String, EntryType, String, Vec<u8>)> = Vec::new();
    for d in 0..40 {
        entries.push((format!("d{d}/"), EntryType::Directory, "".into(), vec![]));
        for f in 0..20 {
            let data = format!("d{d}/f{f}").repeat(50).into_bytes();
            entries.push((format!("d{d}/f{f}"), EntryType::Regular, "".into(), data));
        }
    }
    let more: [(&str, EntryType, &str, &[u8]); 8] = [
        ("d0/hard", EntryType::Link, "d0/f19", b""),
        ("alias", EntryType::Symlink, "d1", b""),
        (
            "alias/f3",
            EntryType::Regular,
            "",
            b"replaced through the alias",
        ),
        ("d2/.wh.f7", EntryType::Regular, "", b""),
        ("d3", EntryType::Regular, "", b"the tree is gone"),
        ("d4/f5", EntryType::Symlink, "f6", b""),
        ("d5/f0", EntryType::Regular, "", b"second"),
        ("d5/hard", EntryType::Link, "d5/f0", b""),
    ];
    for (name, kind, link, data) in more {
        entries.push((name.into(), kind, link.into(), data.to_vec()));
    }
    let borrowed: Vec<(&str, EntryType, &str, &[u8])> = entries
        .iter()
        .map(|(n, k, l, d)| (n.as_str(), *k, l.as_str(), d.as_slice()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let unpacked = unpack(raw_tar(&borrowed).as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
    let read = |p: &str| std::fs::read(dir.path().join(p)).unwrap();
    assert_eq!(read("d9/f13"), b"d9/f13".repeat(50));
    assert_eq!(read("d0/hard"), read("d0/f19"));
    let hard = std::fs::metadata(dir.path().join("d0/hard")).unwrap();
    assert_eq!(hard.nlink(), 2);
    assert_eq!(read("d1/f3"), b"replaced through the alias");
    let whiteout = std::fs::symlink_metadata(dir.path().join("d2/f7")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(read("d3"), b"the tree is gone");
    let link = std::fs::read_link(dir.path().join("d4/f5")).unwrap();
    assert_eq!(link, Path::new("f6"));
    assert_eq!(read("d5/hard"), b"second");
    // Directory times are restored after their files were written.
    let times = std::fs::metadata(dir.path().join("d9")).unwrap();
    assert_eq!(times.mtime(), 1_700_000_000);
    assert_eq!(unpacked.entries, 40 + 800 + 8);
}

#[test]
fn a_directory_is_resolved_again_once_a_file_replaced_part_of_its_path() {
    // "a/b" leads to the root through two symlinks; "a/b/a" replaces
    // the symlink "a" with a file, so "a/b/y" no longer leads anywhere
    // and the layer is refused, as one thread resolving each path
    // would refuse it.
    let tar = raw_tar(&[
        ("b", EntryType::Symlink, ".", b""),
        ("a", EntryType::Symlink, ".", b""),
        ("a/b/f1", EntryType::Regular, "", b"one"),
        ("a/b/a", EntryType::Regular, "", b"a file now"),
        ("a/b/y", EntryType::Regular, "", b"nowhere"),
    ]);
    let (err, dir) = refused(&tar);
    assert!(err.is(tonic::Code::InvalidArgument), "{err:?}");
    assert!(!dir.path().join("layer/y").exists());
}

#[test]
fn a_writer_failure_fails_the_unpack() {
    // "f" is a file (written by a writer); "f/x" needs it to be a
    // directory. Whichever thread is first, the layer is refused.
    for _ in 0..20 {
        let tar = raw_tar(&[
            ("f", EntryType::Regular, "", b"file"),
            ("f/x", EntryType::Regular, "", b"below a file"),
        ]);
        let (err, _dir) = refused(&tar);
        assert!(err.is(tonic::Code::InvalidArgument), "{err:?}");
    }
}

#[test]
fn sparse_files_keep_their_holes_and_overlay_attributes_are_dropped() {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc".as_slice()),
            ("SCHILY.xattr.user.note", b"kept".as_slice()),
        ])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    let length = 64 << 20;
    header.set_size(length);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "zeros", io::repeat(0).take(length))
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unpacked = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
    assert_eq!(unpacked.size, length);
    let meta = std::fs::metadata(dir.path().join("zeros")).unwrap();
    assert_eq!(meta.len(), length);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    let path = dir.path().join("zeros");
    assert_eq!(xattr::get(&path, "trusted.overlay.redirect").unwrap(), None);
    if let Ok(Some(note)) = xattr::get(&path, "user.note") {
        assert_eq!(note, b"kept");
    }
}

#[test]
fn small_files_written_side_by_side_keep_their_holes_and_bytes() {
    // At most MAX_SMALL_FILE: a writer thread makes these.
    let mut tail = vec![0u8; 200 * 1024];
    tail[150 * 1024..].fill(9);
    let tar = raw_tar(&[
        ("hole", EntryType::Regular, "", &[0u8; 250 * 1024]),
        ("tail", EntryType::Regular, "", &tail),
    ]);
    let dir = tempfile::tempdir().unwrap();
    unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
    let hole = std::fs::metadata(dir.path().join("hole")).unwrap();
    assert_eq!(hole.len(), 250 * 1024);
    assert!(hole.blocks() * 512 < 250 * 1024, "{} blocks", hole.blocks());
    assert!(
        std::fs::read(dir.path().join("hole"))
            .unwrap()
            .iter()
            .all(|b| *b == 0)
    );
    assert!(std::fs::read(dir.path().join("tail")).unwrap() == tail);
}

#[test]
fn a_layer_past_its_budget_is_resource_exhausted() {
    let tar = raw_tar(&[("big", EntryType::Regular, "", &[7u8; 64 * 1024])]);
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget {
        stream: 16 * 1024,
        ..Budget::UNLIMITED
    };
    let err = unpack(tar.as_slice(), dir.path(), budget).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // The rule that refused it is kept as the typed cause.
    let cause = err.cause::<crate::archive::tar_limits::LayerTooLarge>();
    assert_eq!(cause.map(|c| c.limit), Some(16 * 1024), "{err:?}");
}

#[test]
fn overlong_paths_are_refused_with_their_reason() {
    let deep = "d/".repeat(3000);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o755);
    header.set_entry_type(EntryType::Directory);
    builder
        .append_data(&mut header, &deep, io::empty())
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let (err, _layer) = refused(&tar);
    assert!(err.to_string().contains("path too long"), "{err}");
}

#[test]
fn the_rehearsal_at_start_up_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let layers = crate::store::layers::LayerStore::open(dir.path()).unwrap();
    rehearse(&layers).unwrap();
    let staging = dir.path().join("staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    assert!(layers.all().is_empty());
}
