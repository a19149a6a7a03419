//! What an image really is, from its first bytes: the format from magic bytes (never from a
//! file name or a Content-Type) and the dimensions from the header, before any decoding.

use std::fmt;

/// The formats the gateway accepts, as sniffed from magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
    Gif,
}

impl ImageFormat {
    /// The MIME type written into `data:` URIs.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::WebP => "image/webp",
            Self::Gif => "image/gif",
        }
    }

    /// A short lower-case name for reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::WebP => "webp",
            Self::Gif => "gif",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes needed to recognise every accepted format.
pub const SNIFF_LEN: usize = 12;

/// The format the bytes start with, if it is one the gateway accepts.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(ImageFormat::Png),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some(ImageFormat::WebP),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(ImageFormat::Gif),
        _ => None,
    }
}

/// What the header says, read without decoding pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl Probe {
    /// Width times height, without overflow.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The longer side.
    pub fn long_edge(&self) -> u32 {
        self.width.max(self.height)
    }
}

/// Why bytes are not an image the gateway can use. Messages are general: they never repeat
/// the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("it is not a JPEG, PNG, WebP or GIF image")]
    UnknownFormat,
    #[error("its header is truncated or corrupt")]
    BadHeader,
    #[error("it declares a size of zero pixels")]
    Empty,
}

/// Sniffs the format and reads the dimensions from the header.
pub fn probe(bytes: &[u8]) -> Result<Probe, ProbeError> {
    let format = sniff(bytes).ok_or(ProbeError::UnknownFormat)?;
    let size = imagesize::blob_size(bytes).map_err(|_| ProbeError::BadHeader)?;
    let width = u32::try_from(size.width).map_err(|_| ProbeError::BadHeader)?;
    let height = u32::try_from(size.height).map_err(|_| ProbeError::BadHeader)?;
    if width == 0 || height == 0 {
        return Err(ProbeError::Empty);
    }
    Ok(Probe {
        format,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_decide_the_format() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some(ImageFormat::Png));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(ImageFormat::WebP));
        assert_eq!(sniff(b"GIF89a...."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"GIF87a...."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"<!doctype html>"), None);
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"\xFF\xD8"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn probe_reads_a_png_header_without_decoding() {
        // A PNG signature and an IHDR declaring 30000x30000: no pixel data at all.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&30000u32.to_be_bytes());
        png.extend_from_slice(&30000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        let p = probe(&png);
        assert_eq!(
            p,
            Ok(Probe {
                format: ImageFormat::Png,
                width: 30000,
                height: 30000
            })
        );
        assert_eq!(probe(b"\x89PNG\r\n\x1a\n\0\0"), Err(ProbeError::BadHeader));
        assert_eq!(probe(b"hello world!"), Err(ProbeError::UnknownFormat));
    }
}
