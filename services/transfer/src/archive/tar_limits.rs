//! Bounds on what one tar stream may make imaged hold or write.
//!
//! The `tar` crate reads a GNU long name, long link name or PAX record
//! whole into memory before it hands out the entry it describes, with no
//! cap: a 1 GiB long name costs gigabytes. [`TarGuard`] sits between the
//! decompressor and the tar reader, follows the archive's framing exactly
//! as the tar crate does (PAX `size` overrides, GNU sparse extension
//! blocks) and refuses a header extension bigger than any real image
//! needs before a byte of it is buffered. It also stops a stream that
//! inflates past the layer's byte budget (a decompression bomb), so what
//! is refused was never written.

use std::io::{self, Read};

/// GNU long names and long link names: `PATH_MAX` is 4096; this leaves
/// room for any real name and refuses the rest.
pub const MAX_LONG_NAME: u64 = 64 * 1024;
/// One PAX record set (paths, times, xattrs such as file capabilities or
/// SELinux labels).
pub const MAX_PAX: u64 = 1024 * 1024;
/// GNU sparse extension blocks of one entry (21 regions each).
pub const MAX_SPARSE_BLOCKS: u32 = 4096;
/// A path or link target inside a layer, as the kernel's `PATH_MAX`.
pub const MAX_PATH: usize = 4096;

const BLOCK: usize = 512;

/// Where the guard is in the archive's framing.
enum State {
    /// Collecting a 512-byte header.
    Header { filled: usize },
    /// Collecting a GNU sparse extension block.
    Sparse { filled: usize, blocks: u32 },
    /// Inside an entry's data (rounded up to whole blocks); a PAX record
    /// being captured for its `size`.
    Data {
        left: u64,
        size: u64,
        pax: Option<Vec<u8>>,
    },
    /// After the end-of-archive block, or on a header the tar reader will
    /// refuse itself: nothing more to follow.
    Done,
}

/// A reader that refuses oversized header extensions and streams longer
/// than `budget` bytes; see the module comment.
pub struct TarGuard<R> {
    inner: R,
    state: State,
    header: [u8; BLOCK],
    /// Size the last PAX record gave the next entry.
    pax_size: Option<u64>,
    /// The entry whose data follows its sparse extension blocks.
    sparse_data: u64,
    read: u64,
    budget: u64,
}

impl<R: Read> TarGuard<R> {
    /// Guards `inner`, allowing at most `budget` bytes of tar stream.
    pub fn new(inner: R, budget: u64) -> Self {
        TarGuard {
            inner,
            state: State::Header { filled: 0 },
            header: [0; BLOCK],
            pax_size: None,
            sparse_data: 0,
            read: 0,
            budget,
        }
    }

    /// Follows the bytes `seen` through the framing.
    fn observe(&mut self, mut seen: &[u8]) -> io::Result<()> {
        while !seen.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header { filled } | State::Sparse { filled, .. } => {
                    let take = (BLOCK - *filled).min(seen.len());
                    self.header[*filled..*filled + take].copy_from_slice(&seen[..take]);
                    *filled += take;
                    seen = &seen[take..];
                    if *filled == BLOCK {
                        self.state = match self.state {
                            State::Sparse { blocks, .. } => self.sparse_block(blocks)?,
                            _ => self.parse_header()?,
                        };
                    }
                }
                State::Data { left, size, pax } => {
                    let take = (*left).min(seen.len() as u64) as usize;
                    if let Some(buffer) = pax {
                        let wanted = (*size as usize).saturating_sub(buffer.len()).min(take);
                        buffer.extend_from_slice(&seen[..wanted]);
                    }
                    *left -= take as u64;
                    seen = &seen[take..];
                    if *left == 0 {
                        if let Some(record) = pax.take() {
                            self.pax_size = pax_size(&record);
                        }
                        self.state = State::Header { filled: 0 };
                    }
                }
            }
        }
        Ok(())
    }

    /// The state after a complete header, refusing oversized extensions.
    fn parse_header(&mut self) -> io::Result<State> {
        let h = &self.header;
        if h.iter().all(|b| *b == 0) || !checksum_ok(h) {
            return Ok(State::Done);
        }
        let Some(header_size) = parse_size(&h[124..136]) else {
            return Ok(State::Done);
        };
        let kind = h[156];
        let magic = (&h[257..263], &h[263..265]);
        let ustar = magic == (b"ustar\0".as_slice(), b"00".as_slice());
        let gnu = magic == (b"ustar ".as_slice(), b" \0".as_slice());
        let extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        let size = if extension {
            header_size
        } else {
            self.pax_size.unwrap_or(header_size)
        };
        let consumed = (ustar || gnu) && matches!(kind, b'L' | b'K' | b'x');
        if consumed {
            let (limit, what) = match kind {
                b'L' => (MAX_LONG_NAME, "GNU long name"),
                b'K' => (MAX_LONG_NAME, "GNU long link name"),
                _ => (MAX_PAX, "PAX header"),
            };
            if size > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{what} of {size} bytes; at most {limit} are accepted"),
                ));
            }
        } else {
            // The entry the extensions described is handed out; they end.
            self.pax_size = None;
        }
        let pax = (consumed && kind == b'x').then(Vec::new);
        if kind == b'S' && gnu && h[482] != 0 {
            self.sparse_data = size;
            return Ok(State::Sparse {
                filled: 0,
                blocks: 0,
            });
        }
        Ok(data_state(size, pax))
    }

    /// The state after one GNU sparse extension block.
    fn sparse_block(&mut self, blocks: u32) -> io::Result<State> {
        let blocks = blocks + 1;
        if blocks > MAX_SPARSE_BLOCKS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sparse file with more than {MAX_SPARSE_BLOCKS} extension headers"),
            ));
        }
        if self.header[504] != 0 {
            return Ok(State::Sparse { filled: 0, blocks });
        }
        Ok(data_state(self.sparse_data, None))
    }
}

/// A layer that inflates past what one layer may take (the configured
/// maximum, or the free space it lands on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("layer inflates past {limit} bytes, the most one layer may take")]
pub struct LayerTooLarge {
    pub limit: u64,
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.budget {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                LayerTooLarge { limit: self.budget },
            ));
        }
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

fn data_state(size: u64, pax: Option<Vec<u8>>) -> State {
    let padded = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
    if padded == 0 {
        return State::Header { filled: 0 };
    }
    State::Data {
        left: padded,
        size,
        pax,
    }
}

/// The `size` record of a PAX record set, read as the tar crate reads it.
fn pax_size(record: &[u8]) -> Option<u64> {
    for extension in tar::PaxExtensions::new(record) {
        let extension = extension.ok()?;
        if extension.key() == Ok("size") {
            return extension.value().ok()?.parse().ok();
        }
    }
    None
}

fn checksum_ok(h: &[u8; BLOCK]) -> bool {
    let sum: u32 = h[..148]
        .iter()
        .chain(&h[156..])
        .map(|b| *b as u32)
        .sum::<u32>()
        + 8 * 32;
    parse_octal(&h[148..156]) == Some(sum as u64)
}

/// A size field: octal text, or GNU's base-256 when the top bit is set.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut value: u64 = 0;
        for (i, byte) in field.iter().enumerate() {
            let byte = if i == 0 { byte & 0x7f } else { *byte };
            value = value.checked_mul(256)?.checked_add(byte as u64)?;
        }
        return Some(value);
    }
    parse_octal(field)
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        header
    }

    /// A stream whose first header declares a huge extension, followed by
    /// endless bytes: refused at the header, nothing more read.
    #[test]
    fn oversized_extensions_are_refused_at_their_header() {
        for kind in [
            tar::EntryType::GNULongName,
            tar::EntryType::GNULongLink,
            tar::EntryType::XHeader,
        ] {
            let head = header("././@LongLink", kind, 1 << 30);
            let stream = head.as_bytes().as_slice().chain(io::repeat(b'a'));
            let mut archive = tar::Archive::new(TarGuard::new(stream, u64::MAX));
            let err = archive
                .entries()
                .unwrap()
                .next()
                .unwrap()
                .err()
                .expect("refused");
            assert!(err.to_string().contains("at most"), "{kind:?}: {err}");
        }
    }

    #[test]
    fn framing_follows_pax_sizes_and_long_names() {
        let mut builder = tar::Builder::new(Vec::new());
        let long = "d/".repeat(200) + "file";
        let mut head = tar::Header::new_gnu();
        head.set_size(3);
        head.set_mode(0o644);
        builder
            .append_data(&mut head, &long, b"abc".as_slice())
            .unwrap();
        builder
            .append_pax_extensions([("size", b"5".as_slice())])
            .unwrap();
        let mut head = header("five", tar::EntryType::Regular, 0);
        // The PAX size wins over the header's 0: five data bytes follow.
        builder.append(&head, b"12345".as_slice()).unwrap();
        head = header("after", tar::EntryType::Regular, 1);
        builder.append(&head, b"z".as_slice()).unwrap();
        let bytes = builder.into_inner().unwrap();

        let mut archive = tar::Archive::new(TarGuard::new(bytes.as_slice(), u64::MAX));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [long.as_str(), "five", "after"]);
    }

    #[test]
    fn a_stream_past_its_budget_is_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        let head = header("big", tar::EntryType::Regular, 8192);
        builder.append(&head, vec![0u8; 8192].as_slice()).unwrap();
        let bytes = builder.into_inner().unwrap();
        let mut guard = TarGuard::new(bytes.as_slice(), 4096);
        let err = io::copy(&mut guard, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    }
}
