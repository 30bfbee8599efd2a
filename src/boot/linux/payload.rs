//! The compressed kernel inside a bzImage: which format it is and how to get
//! the vmlinux ELF back out of it.
//!
//! The kernel's build compresses `vmlinux.bin` (the stripped vmlinux ELF) with
//! one of seven formats and appends the uncompressed size as a little-endian
//! `u32`; the setup header's `payload_offset`/`payload_length` (protocol 2.08+)
//! point at the result, size included. This module decodes the formats for
//! which a maintained crate exists — xz (with the x86 BCJ filter the kernel
//! uses, through liblzma), gzip, zstd and the *legacy* lz4 frames of `lz4 -l` —
//! and names the others (bzip2, lzma, lzo) so that the caller can say why it
//! falls back to the kernel's own decompressor.
//!
//! Invariant: decoding never yields more than [`MAX_DECOMPRESSED`] bytes, so a
//! crafted payload cannot exhaust host memory, and malformed input is an error,
//! never a panic.

use std::io::Read;
use thiserror::Error;

/// Most bytes a payload may decompress to: Debian's vmlinux is 66 MiB; a kernel
/// whose image alone exceeds this could not boot in the largest guest anyway.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// The legacy lz4 frame's magic (`lz4 -l`, what the kernel's `unlz4` reads).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Largest uncompressed block of a legacy lz4 frame.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// A payload's format, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// lzma "alone" (`5d 00 00`).
    Lzma,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// lzo (`89 4c 5a 4f`, lzop).
    Lzo,
    /// lz4, legacy frames (`02 21 4c 18`).
    Lz4,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// Not compressed: the ELF itself (`CONFIG_KERNEL_UNCOMPRESSED`).
    None,
}

impl Compression {
    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Bzip2 => "bzip2",
            Self::Lzma => "lzma",
            Self::Xz => "xz",
            Self::Lzo => "lzo",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
            Self::None => "uncompressed",
        }
    }

    /// Whether [`decompress`] decodes this format.
    pub fn is_supported(self) -> bool {
        !matches!(self, Self::Bzip2 | Self::Lzma | Self::Lzo)
    }

    /// The format of `payload`, from its magic.
    pub fn detect(payload: &[u8]) -> Option<Self> {
        const MAGICS: [(&[u8], Compression); 8] = [
            (&[0x1f, 0x8b], Compression::Gzip),
            (b"BZh", Compression::Bzip2),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"\x7fELF", Compression::None),
            // lzma-alone has no real magic: properties byte 0x5d (lc=3, lp=0,
            // pb=2, what `lzma -9` writes) and a dictionary size below 16 MiB.
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| payload.starts_with(magic))
            .map(|&(_, format)| format)
    }
}

/// Why a payload could not be decompressed.
#[derive(Debug, Error)]
pub enum PayloadError {
    /// The first bytes are no known format's magic.
    #[error("the compressed kernel starts with {0:02x?}, the magic of no format the kernel uses")]
    UnknownFormat(Vec<u8>),
    /// A format the kernel knows but lore-dbg does not decode.
    #[error("the kernel is compressed with {}, which lore-dbg does not decompress (it decompresses xz, gzip, zstd and lz4)", .0.name())]
    Unsupported(Compression),
    /// The decoder failed: the payload is corrupt or cut short.
    #[error("the {}-compressed kernel is corrupt or truncated", format.name())]
    Corrupt {
        /// Its format.
        format: Compression,
        /// What the decoder said.
        #[source]
        source: std::io::Error,
    },
    /// It would decompress to more than [`MAX_DECOMPRESSED`] bytes.
    #[error("the {}-compressed kernel decompresses to more than {MAX_DECOMPRESSED} bytes", .0.name())]
    TooLarge(Compression),
}

/// Decompresses a bzImage payload (as the setup header delimits it: the
/// compressed stream, then the uncompressed size as a `u32`).
pub fn decompress(payload: &[u8]) -> Result<(Compression, Vec<u8>), PayloadError> {
    let format = Compression::detect(payload)
        .ok_or_else(|| PayloadError::UnknownFormat(payload.iter().take(8).copied().collect()))?;
    let corrupt = |source| PayloadError::Corrupt { format, source };
    // The size the build appended, as a hint for the buffer (bounded).
    let hint = payload
        .len()
        .checked_sub(4)
        .and_then(|at| payload.get(at..))
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u32::from_le_bytes)
        .min(MAX_DECOMPRESSED as u32) as usize;
    let decoded = match format {
        Compression::Bzip2 | Compression::Lzma | Compression::Lzo => {
            return Err(PayloadError::Unsupported(format))
        }
        Compression::None => payload.to_vec(),
        Compression::Gzip => {
            read_bounded(flate2::read::GzDecoder::new(payload), hint).map_err(corrupt)?
        }
        Compression::Xz => {
            // One xz stream (the BCJ filter is in its block headers); the
            // appended size after it is not a second stream.
            let stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)
                .map_err(|error| corrupt(error.into()))?;
            read_bounded(liblzma::read::XzDecoder::new_stream(payload, stream), hint)
                .map_err(corrupt)?
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(corrupt)?
                .single_frame();
            read_bounded(decoder, hint).map_err(corrupt)?
        }
        Compression::Lz4 => decode_lz4_legacy(payload, hint).map_err(corrupt)?,
    };
    if decoded.len() as u64 > MAX_DECOMPRESSED {
        return Err(PayloadError::TooLarge(format));
    }
    Ok((format, decoded))
}

/// Reads `reader` to its end, but at most one byte more than
/// [`MAX_DECOMPRESSED`] (which the caller refuses).
fn read_bounded(reader: impl Read, hint: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(hint);
    reader.take(MAX_DECOMPRESSED + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// The kernel's lz4: the legacy magic, then blocks, each a `u32` compressed
/// size and at most 8 MiB once decompressed; another magic may start a second
/// frame. The last four bytes of the payload are the appended size, not a block.
fn decode_lz4_legacy(payload: &[u8], hint: usize) -> std::io::Result<Vec<u8>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let body = &payload[..payload.len().saturating_sub(4)];
    let mut rest = body
        .get(4..)
        .ok_or_else(|| invalid("no lz4 block".into()))?;
    let mut out = Vec::with_capacity(hint);
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while rest.len() >= 4 {
        let (size, tail) = rest.split_at(4);
        let size = u32::from_le_bytes(size.try_into().unwrap_or_default());
        if size == LZ4_LEGACY_MAGIC {
            rest = tail;
            continue;
        }
        let compressed = tail
            .get(..size as usize)
            .ok_or_else(|| invalid(format!("an lz4 block of {size} bytes runs past the end")))?;
        let len = lz4_flex::block::decompress_into(compressed, &mut block)
            .map_err(|error| invalid(error.to_string()))?;
        if (out.len() + len) as u64 > MAX_DECOMPRESSED {
            return Err(invalid("too large".into()));
        }
        out.extend_from_slice(&block[..len]);
        rest = &tail[size as usize..];
    }
    if out.is_empty() {
        return Err(invalid("no lz4 block".into()));
    }
    Ok(out)
}

/// Compresses `data` as the kernel's build does for `format` (the stream, then
/// the uncompressed size as a `u32`): for tests and for wrapping a vmlinux into
/// a bzImage. Returns `None` for the formats lore-dbg does not decode.
pub fn compress(format: Compression, data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut out = match format {
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(data).ok()?;
            encoder.finish().ok()?
        }
        Compression::Xz => {
            // As `xz --check=crc32 --x86 --lzma2=dict=32MiB` in scripts/xz_wrap.sh.
            let mut filters = liblzma::stream::Filters::new();
            filters.x86();
            let options = liblzma::stream::LzmaOptions::new_preset(6).ok()?;
            filters.lzma2(&options);
            let stream = liblzma::stream::Stream::new_stream_encoder(
                &filters,
                liblzma::stream::Check::Crc32,
            )
            .ok()?;
            let mut encoder = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
            encoder.write_all(data).ok()?;
            encoder.finish().ok()?
        }
        Compression::Zstd => zstd::bulk::compress(data, 19).ok()?,
        Compression::Lz4 => {
            let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
            for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
                let block = lz4_flex::block::compress(chunk);
                out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        Compression::None => data.to_vec(),
        Compression::Bzip2 | Compression::Lzma | Compression::Lzo => return None,
    };
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUPPORTED: [Compression; 5] = [
        Compression::Xz,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Lz4,
        Compression::None,
    ];

    fn sample() -> Vec<u8> {
        // Code-like bytes (calls with relative targets, which BCJ rewrites) and
        // a long repeat.
        let mut data = b"\x7fELF".to_vec();
        for index in 0u32..4000 {
            data.push(0xe8);
            data.extend_from_slice(&(index * 17).to_le_bytes());
        }
        data.extend(std::iter::repeat(0x90).take(10_000));
        data
    }

    #[test]
    fn every_supported_format_round_trips() {
        let data = sample();
        for format in SUPPORTED {
            let payload = compress(format, &data).unwrap();
            assert_eq!(Compression::detect(&payload), Some(format), "{format:?}");
            let (found, decoded) = decompress(&payload).unwrap();
            assert_eq!(found, format);
            if format == Compression::None {
                // The ELF as is, the appended size after it.
                assert_eq!(decoded, payload);
            } else {
                assert_eq!(decoded, data, "{format:?}");
            }
        }
    }

    #[test]
    fn xz_payloads_carry_the_x86_filter() {
        // The block header's filter flags list filter id 0x04 (x86 BCJ).
        let payload = compress(Compression::Xz, &sample()).unwrap();
        let block_header = &payload[12..12 + usize::from(payload[12]) * 4 + 4];
        assert!(block_header.windows(2).any(|pair| pair == [0x04, 0x00]));
    }

    #[test]
    fn lz4_frames_of_several_blocks_and_a_second_magic() {
        let data: Vec<u8> = (0..(LZ4_LEGACY_BLOCK + 1000) as u32)
            .map(|index| (index % 251) as u8)
            .collect();
        let payload = compress(Compression::Lz4, &data).unwrap();
        assert_eq!(decompress(&payload).unwrap().1, data);
        // Two frames concatenated, as `cat a.lz4 b.lz4`.
        let first = compress(Compression::Lz4, b"hello ").unwrap();
        let second = compress(Compression::Lz4, b"world").unwrap();
        let mut joined = first[..first.len() - 4].to_vec();
        joined.extend_from_slice(&second);
        assert_eq!(decompress(&joined).unwrap().1, b"hello world");
    }

    #[test]
    fn unsupported_formats_are_named() {
        for (bytes, name) in [
            (&b"BZh91AY&SY"[..], "bzip2"),
            (&[0x5d, 0, 0, 0x80, 0][..], "lzma"),
            (&[0x89, b'L', b'Z', b'O', 0, 0x0d][..], "lzo"),
        ] {
            let error = decompress(bytes).unwrap_err();
            assert!(matches!(error, PayloadError::Unsupported(_)));
            assert!(error.to_string().contains(name), "{error}");
        }
        assert!(matches!(
            decompress(b"junk junk"),
            Err(PayloadError::UnknownFormat(_))
        ));
    }

    #[test]
    fn truncated_and_corrupt_payloads_are_errors() {
        let data = sample();
        for format in SUPPORTED {
            let payload = compress(format, &data).unwrap();
            for len in (0..payload.len()).step_by(7) {
                if let Ok((_, decoded)) = decompress(&payload[..len]) {
                    // A cut that keeps the whole stream loses only the size.
                    assert!(
                        format == Compression::None || decoded == data,
                        "{format:?} {len}"
                    );
                }
            }
            let mut flipped = payload.clone();
            let middle = flipped.len() / 2;
            flipped[middle] ^= 0x55;
            let _ = decompress(&flipped);
        }
    }
}
