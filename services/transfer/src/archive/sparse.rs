//! Files with holes: written so that a hole costs neither disk nor time.
//!
//! A GNU sparse tar entry carries a map of its data blocks; everything
//! between them is a hole. The tar reader hands such an entry out as its
//! data with zeros read in place of the holes, so reading it costs time in
//! proportion to its apparent size: a 1.5 KB entry with a 1 TiB hole would
//! pin a CPU for minutes. [`write_gnu_sparse`] has the tar crate write it
//! from its map instead, seeking over each hole in one step. Other files
//! are written by [`write_sparse`], which leaves runs of zeros it reads as
//! holes, so a file keeps the disk its data needs.

use std::fs::File;
use std::io::{self, Read, Seek, Write};

use crate::archive::beneath::At;

/// Creates the regular file `at` (which must be free) with the data of the
/// GNU sparse entry `entry`, its holes skipped from the entry's map, and
/// answers it open. The map was checked by the tar reader (blocks in
/// order, not overlapping, adding up to the entry's sizes): an
/// inconsistent one fails the entry before anything is written.
pub fn write_gnu_sparse<R: Read>(entry: &mut tar::Entry<'_, R>, at: &At) -> io::Result<File> {
    entry.set_preserve_mtime(false);
    entry.set_preserve_permissions(false);
    entry.set_unpack_xattrs(false);
    // The tar crate creates it with O_CREAT|O_EXCL at our directory's
    // descriptor and a plain name: nothing planted there is followed.
    match entry.unpack(at.proc_path())? {
        tar::Unpacked::File(file) => Ok(file),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a sparse entry was not unpacked as a file",
        )),
    }
}

/// What a PAX sparse entry's records (`GNU.sparse.*`, as GNU tar writes
/// them with `--posix`) say: the file's real name and length. Its data is
/// the map of its blocks, then the blocks (format 1.0).
#[derive(Debug, PartialEq, Eq)]
pub struct PaxSparse {
    /// The file's name (the entry's own is `GNUSparseFile.N/name`).
    pub name: Vec<u8>,
    /// The file's length, holes included.
    pub real_size: u64,
}

/// Reads an entry's `GNU.sparse.*` records: `None` for an entry without
/// them. The 0.x formats (a map in the records) are refused, as is a 1.0
/// entry without a name or real size.
pub fn pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Option<PaxSparse>> {
    let Some(records) = entry.pax_extensions()? else {
        return Ok(None);
    };
    let (mut major, mut name, mut real_size, mut seen) = (None, None, None, false);
    for record in records {
        let record = record?;
        let Ok(key) = record.key() else { continue };
        let Some(field) = key.strip_prefix("GNU.sparse.") else {
            continue;
        };
        seen = true;
        let value = record.value_bytes();
        match field {
            "major" => major = Some(value.to_vec()),
            "name" => name = Some(value.to_vec()),
            "realsize" => {
                real_size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
            }
            _ => {}
        }
    }
    if !seen {
        return Ok(None);
    }
    let refuse = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if major.as_deref() != Some(b"1") {
        return Err(refuse(
            "a PAX sparse entry of format 0.x (a map in its records) is not supported",
        ));
    }
    match (name, real_size) {
        (Some(name), Some(real_size)) if !name.is_empty() => {
            Ok(Some(PaxSparse { name, real_size }))
        }
        _ => Err(refuse(
            "a PAX sparse entry without GNU.sparse.name or GNU.sparse.realsize",
        )),
    }
}

/// The most blocks a sparse map may list.
const MAX_SPARSE_BLOCKS: u64 = 1 << 20;

/// Writes a PAX 1.0 sparse entry's data (`size` bytes: its map, padded to
/// 512 bytes, then its blocks) into the new file `file`: each block at its
/// offset, each hole one seek. A map whose blocks are out of order,
/// overlap, pass the real size or do not add up to the data that follows
/// is refused.
pub fn write_pax_sparse(
    data: &mut dyn Read,
    size: u64,
    sparse: &PaxSparse,
    file: &mut File,
) -> io::Result<()> {
    let refuse = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut consumed = 0u64;
    let mut number = || -> io::Result<u64> {
        let mut digits = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            data.read_exact(&mut byte)?;
            consumed += 1;
            match byte[0] {
                b'\n' => break,
                b'0'..=b'9' if digits.len() < 20 => digits.push(byte[0]),
                _ => return Err(refuse("a PAX sparse map is not decimal numbers".into())),
            }
        }
        std::str::from_utf8(&digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| refuse("a PAX sparse map holds an empty number".into()))
    };
    let count = number()?;
    if count > MAX_SPARSE_BLOCKS {
        return Err(refuse(format!("a PAX sparse map of {count} blocks")));
    }
    let mut blocks = Vec::with_capacity(count as usize);
    let mut end = 0u64;
    for _ in 0..count {
        let (offset, length) = (number()?, number()?);
        let block_end = offset
            .checked_add(length)
            .filter(|e| offset >= end && *e <= sparse.real_size)
            .ok_or_else(|| {
                refuse("a PAX sparse map out of order, overlapping or past the file".into())
            })?;
        end = block_end;
        blocks.push((offset, length));
    }
    let padded = consumed.div_ceil(512) * 512;
    let stored: u64 = blocks.iter().map(|(_, length)| length).sum();
    if padded.checked_add(stored) != Some(size) {
        return Err(refuse(
            "a PAX sparse map that does not add up to its data".into(),
        ));
    }
    io::copy(&mut data.take(padded - consumed), &mut io::sink())?;
    for (offset, length) in blocks {
        file.seek(io::SeekFrom::Start(offset))?;
        if io::copy(&mut data.take(length), file)? != length {
            return Err(refuse("a PAX sparse entry ends before its blocks".into()));
        }
    }
    file.set_len(sparse.real_size)
}

/// How much of a file is checked for zeros at a time: a chunk of zeros
/// becomes a hole.
const SPARSE_CHUNK: usize = 128 * 1024;

/// Writes an entry's data, leaving runs of zeros as holes: a sparse file
/// (GNU sparse entries arrive as data with zeros for their holes) takes
/// the disk its data needs, not its length. Returns the bytes written.
pub fn write_sparse(data: &mut dyn Read, file: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; SPARSE_CHUNK];
    let mut length = 0u64;
    let mut hole = false;
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hole = write_chunk(&buf[..n], file)?;
        length += n as u64;
    }
    if hole {
        file.set_len(length)?;
    }
    Ok(length)
}

/// [`write_sparse`] for data already in memory (a writer thread's small
/// file), with no buffer to fill: no copy, and no 128 KiB allocated and
/// zeroed per file.
pub fn write_sparse_bytes(data: &[u8], file: &mut File) -> io::Result<()> {
    let mut hole = false;
    for chunk in data.chunks(SPARSE_CHUNK) {
        hole = write_chunk(chunk, file)?;
    }
    if hole {
        file.set_len(data.len() as u64)?;
    }
    Ok(())
}

/// Writes `chunk` at the file's offset, or skips past it when it is all
/// zeros; answers whether it was skipped (the file must then be given
/// its length at the end).
fn write_chunk(chunk: &[u8], file: &mut File) -> io::Result<bool> {
    if chunk.iter().all(|b| *b == 0) {
        file.seek(io::SeekFrom::Current(chunk.len() as i64))?;
        Ok(true)
    } else {
        file.write_all(chunk)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    use imaged_fixtures::{Compression, LayerBuilder};

    use crate::archive::unpack::unpack;
    use crate::store::layers::Budget;

    const TIB: u64 = 1 << 40;

    fn one_tib_hole() -> Vec<u8> {
        let mut head = b"head".to_vec();
        head.resize(512, 0);
        LayerBuilder::new()
            .sparse_file("hole", &[(0, &head), (TIB - 4, b"tail")], TIB)
            .build(Compression::None)
            .unwrap()
            .data
    }

    #[test]
    fn a_hole_costs_one_seek_whatever_its_size() {
        let tar = one_tib_hole();
        assert!(tar.len() < 4096, "{} bytes", tar.len());
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let unpacked = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        // Reading the hole as zeros took 7 minutes a TiB; a seek, nothing.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(unpacked.size, TIB);
        let path = dir.path().join("hole");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), TIB);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let mut file = std::fs::File::open(&path).unwrap();
        let mut head = [0u8; 4];
        std::io::Read::read_exact(&mut file, &mut head).unwrap();
        assert_eq!(&head, b"head");
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(TIB - 4)).unwrap();
        std::io::Read::read_exact(&mut file, &mut head).unwrap();
        assert_eq!(&head, b"tail");
    }

    #[test]
    fn the_apparent_size_counts_against_the_layer_limit() {
        let tar = one_tib_hole();
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            apparent: 64 << 30,
            ..Budget::UNLIMITED
        };
        let err = unpack(tar.as_slice(), dir.path(), budget).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        assert!(!dir.path().join("hole").exists());
    }

    #[test]
    fn a_pax_sparse_file_is_named_by_its_records_and_its_holes_cost_a_seek() {
        let tar = LayerBuilder::new()
            .pax_sparse_file("dir/hole", &[(0, b"head"), (TIB - 4, b"tail")], TIB)
            .build(Compression::None)
            .unwrap()
            .data;
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let unpacked = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(unpacked.size, TIB);
        assert!(!dir.path().join("dir/GNUSparseFile.0").exists());
        let path = dir.path().join("dir/hole");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), TIB);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let mut file = std::fs::File::open(&path).unwrap();
        let mut four = [0u8; 4];
        std::io::Read::read_exact(&mut file, &mut four).unwrap();
        assert_eq!(&four, b"head");
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(TIB - 4)).unwrap();
        std::io::Read::read_exact(&mut file, &mut four).unwrap();
        assert_eq!(&four, b"tail");
    }

    #[test]
    fn a_pax_sparse_map_that_lies_is_refused() {
        let lies: [(&str, &[u8]); 4] = [
            ("overlapping", b"2\n0\n4\n2\n4\n"),
            ("past the file", b"1\n8192\n4\n"),
            ("more data than it says", b"1\n0\n2\n"),
            ("not numbers", b"1\nzero\n4\n"),
        ];
        for (what, map) in lies {
            let blocks: [(u64, &[u8]); 1] = [(0, b"data")];
            let tar = LayerBuilder::new()
                .pax_sparse_raw("f", map.to_vec(), &blocks, 4096)
                .build(Compression::None)
                .unwrap()
                .data;
            let dir = tempfile::tempdir().unwrap();
            let err = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap_err();
            assert!(err.is(tonic::Code::InvalidArgument), "{what}: {err}");
        }
    }

    #[test]
    fn an_inconsistent_map_is_refused() {
        // Blocks out of order: the second starts before the first ends.
        let tar = LayerBuilder::new()
            .sparse_file("bad", &[(4096, &[1u8; 512]), (0, &[2u8; 512])], 8192)
            .build(Compression::None)
            .unwrap()
            .data;
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap_err();
        assert!(err.is(tonic::Code::InvalidArgument), "{err}");
        // A map that ends past the size it declares.
        let tar = LayerBuilder::new()
            .sparse_file("bad", &[(0, &[1u8; 512]), (8192, &[2u8; 512])], 4096)
            .build(Compression::None)
            .unwrap()
            .data;
        let err = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap_err();
        assert!(err.is(tonic::Code::InvalidArgument), "{err}");
    }
}
