//! The CPU work for one image: probe, decide, and only when needed decode, resize, orient and
//! encode. Synchronous and pure (bytes in, bytes out): no IO, no async, no logging. The caller
//! runs [`prepare`] on the blocking pool.
//!
//! The order is the cost order. The header is read first and an image declaring more than
//! `max_pixels` is refused before a byte of pixel memory is allocated. An image that already
//! fits and is a single frame goes out as the very `Bytes` it came in as. Everything else is
//! decoded: JPEG with libjpeg-turbo, scaled by M/8 inside the IDCT so an 18-megapixel photo
//! never exists at full size in memory, other formats with the `image` crate under strict
//! limits. The decoded raster is resized with `fast_image_resize` (Lanczos3, premultiplied
//! alpha), turned upright per its EXIF orientation, and encoded as JPEG (libjpeg-turbo) or PNG.
//!
//! Decoders are large C and Rust codebases fed with client bytes, so the whole decode-to-encode
//! step runs under `catch_unwind`: a panic in any of them becomes [`ImageError::Decode`].

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use fast_image_resize as fir;
use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageDecoder as _, ImageEncoder as _};
use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor, Subsamp};

use crate::config::OutputFormat;
use crate::images::sniff::{self, ImageFormat, Probe, ProbeError};

/// What one image must become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The longest side allowed, in pixels; greater than 0.
    pub max_edge: u32,
    /// Images declaring more pixels than this are refused before decoding.
    pub max_pixels: u64,
    /// The format of re-encoded images (an unchanged image keeps its own).
    pub output: OutputFormat,
    /// JPEG quality for re-encoded images, 1..=100.
    pub jpeg_quality: u8,
}

/// What [`prepare`] did to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The input bytes are sent as they are.
    Unchanged,
    /// The image was larger than `max_edge` and was made smaller.
    Downscaled,
    /// The size was fine but the encoding was not (an animation became its first frame).
    Reencoded,
}

/// The image to send, and what it was.
#[derive(Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The encoded image: the input itself when `action` is `Unchanged`.
    pub bytes: Bytes,
    pub format: ImageFormat,
    /// Final width, after EXIF orientation was applied when the image was re-encoded. An
    /// unchanged image reports its stored size.
    pub width: u32,
    /// Final height, see `width`.
    pub height: u32,
    /// What the header of the input said.
    pub original: Probe,
    pub action: Action,
}

/// A `Debug` that shows the size of the image, never its bytes.
impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("original", &self.original)
            .field("action", &self.action)
            .finish()
    }
}

/// Why an image could not be prepared. The messages speak to the client and never repeat the
/// image bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Refused from the header, before decoding: the client's fault.
    #[error(
        "the image is {width}x{height} = {pixels} pixels; this gateway accepts at most {limit} \
         (images.max_pixels)"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    /// Not an image the gateway accepts, from its first bytes: the client's fault.
    #[error("the data is not a usable image: {0}")]
    Probe(#[from] ProbeError),
    /// The header was fine but the pixel data is not (or a decoder gave up): the client's fault.
    #[error("the image could not be decoded (corrupt or truncated)")]
    Decode,
    /// Decoded pixels could not be resized or encoded: the gateway's fault.
    #[error("the image could not be re-encoded")]
    Encode,
}

/// Everything for one image: probe, decide, decode/resize/encode when needed.
pub fn prepare(input: Bytes, target: &Target) -> Result<Prepared, ImageError> {
    let original = sniff::probe(&input)?;
    let pixels = original.pixels();
    if pixels > target.max_pixels {
        return Err(ImageError::TooManyPixels {
            width: original.width,
            height: original.height,
            pixels,
            limit: target.max_pixels,
        });
    }
    let size = fit(original.width, original.height, target.max_edge);
    let downscale = size != (original.width, original.height);
    if !downscale && !is_animated(original.format, &input) && !is_bloated(input.len(), pixels) {
        return Ok(Prepared {
            bytes: input,
            format: original.format,
            width: original.width,
            height: original.height,
            original,
            action: Action::Unchanged,
        });
    }
    let encoded = catch_unwind(AssertUnwindSafe(|| {
        reencode(&input, original, size, target)
    }))
    .map_err(|_| ImageError::Decode)??;
    Ok(Prepared {
        bytes: encoded.bytes,
        format: encoded.format,
        width: encoded.width,
        height: encoded.height,
        original,
        action: if downscale {
            Action::Downscaled
        } else {
            Action::Reencoded
        },
    })
}

/// The size an image of w x h gets: longest side fitted to max_edge, aspect kept (rounded, each
/// side >= 1), never upscaled.
pub fn fit(w: u32, h: u32, max_edge: u32) -> (u32, u32) {
    let max_edge = max_edge.max(1);
    let long = w.max(h);
    if long <= max_edge {
        return (w, h);
    }
    let scale = |side: u32| {
        let scaled =
            (u64::from(side) * u64::from(max_edge) + u64::from(long) / 2) / u64::from(long);
        // `side <= long`, so `scaled <= max_edge` fits in a u32.
        u32::try_from(scaled).unwrap_or(max_edge).max(1)
    };
    if w >= h {
        (max_edge, scale(h))
    } else {
        (scale(w), max_edge)
    }
}

/// More bytes than even uncompressed RGBA pixels would need (plus room for ordinary
/// metadata): the rest is ancillary chunks or trailing junk, which is re-encoded away
/// rather than inlined and sent upstream (a 1x1 PNG must not carry 20 MB of text).
fn is_bloated(bytes: usize, pixels: u64) -> bool {
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    bytes > pixels.saturating_mul(4).saturating_add(256 * 1024)
}

/// Whether a format providers take as is holds more than one frame. Only a clear "yes" counts:
/// a file this cannot read is left to the provider like any other unchanged image.
fn is_animated(format: ImageFormat, data: &[u8]) -> bool {
    match format {
        ImageFormat::Gif => gif_has_second_frame(data),
        // An extended WebP (VP8X) carries the animation flag in its first chunk.
        ImageFormat::WebP => {
            data.get(12..16) == Some(b"VP8X") && data.get(20).is_some_and(|f| f & 0x02 != 0)
        }
        ImageFormat::Png => png_has_animation_control(data),
        ImageFormat::Jpeg => false,
    }
}

/// An APNG announces itself with an `acTL` chunk before the first `IDAT`; walks chunk headers
/// only (one hop per chunk), never inflating anything.
fn png_has_animation_control(data: &[u8]) -> bool {
    let mut pos: usize = 8;
    while let Some(header) = data.get(pos..pos.saturating_add(8)) {
        let len = usize::try_from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]))
        .unwrap_or(usize::MAX);
        match &header[4..8] {
            b"acTL" => return true,
            b"IDAT" | b"IEND" => return false,
            _ => pos = pos.saturating_add(12).saturating_add(len),
        }
    }
    false
}

/// Walks GIF blocks (skipping sub-blocks, never decoding) until a second image descriptor or
/// the end. Cost: one hop per 255-byte sub-block.
fn gif_has_second_frame(data: &[u8]) -> bool {
    /// Size of a colour table whose flag and size bits sit in `packed`.
    fn color_table(packed: u8) -> usize {
        if packed & 0x80 == 0 {
            0
        } else {
            3 << ((packed & 0x07) + 1)
        }
    }
    /// The position after a chain of data sub-blocks starting at `pos`.
    fn skip_sub_blocks(data: &[u8], mut pos: usize) -> Option<usize> {
        loop {
            let len = usize::from(*data.get(pos)?);
            pos += 1 + len;
            if len == 0 {
                return Some(pos);
            }
        }
    }
    let walk = || -> Option<bool> {
        // Header (6) and logical screen descriptor (7), then the global colour table.
        let mut pos = 13 + color_table(*data.get(10)?);
        let mut frames = 0;
        loop {
            match *data.get(pos)? {
                0x21 => pos = skip_sub_blocks(data, pos + 2)?,
                0x2C => {
                    frames += 1;
                    if frames == 2 {
                        return Some(true);
                    }
                    // Descriptor (10 bytes with the separator), local colour table, LZW code size.
                    pos += 10 + color_table(*data.get(pos + 9)?) + 1;
                    pos = skip_sub_blocks(data, pos)?;
                }
                _ => return Some(false),
            }
        }
    };
    walk().unwrap_or(false)
}

/// Pixels in memory, 8 bits per sample, rows packed.
struct Raster {
    buf: Vec<u8>,
    width: u32,
    height: u32,
    layout: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Gray,
    GrayAlpha,
    Rgb,
    Rgba,
}

impl Layout {
    fn channels(self) -> usize {
        match self {
            Self::Gray => 1,
            Self::GrayAlpha => 2,
            Self::Rgb => 3,
            Self::Rgba => 4,
        }
    }

    fn has_alpha(self) -> bool {
        matches!(self, Self::GrayAlpha | Self::Rgba)
    }

    fn without_alpha(self) -> Self {
        match self {
            Self::Gray | Self::GrayAlpha => Self::Gray,
            Self::Rgb | Self::Rgba => Self::Rgb,
        }
    }

    fn pixel_type(self) -> fir::PixelType {
        match self {
            Self::Gray => fir::PixelType::U8,
            Self::GrayAlpha => fir::PixelType::U8x2,
            Self::Rgb => fir::PixelType::U8x3,
            Self::Rgba => fir::PixelType::U8x4,
        }
    }
}

/// A decoded image and how it must be turned to be upright.
struct Decoded {
    raster: Raster,
    orientation: Orientation,
}

/// The encoded result of [`reencode`].
struct Encoded {
    bytes: Bytes,
    format: ImageFormat,
    width: u32,
    height: u32,
}

/// Decode, resize to `size` (stored orientation), orient, encode. Each step consumes the raster
/// of the step before, so at most two rasters are alive at once.
fn reencode(
    data: &[u8],
    original: Probe,
    size: (u32, u32),
    target: &Target,
) -> Result<Encoded, ImageError> {
    let Decoded {
        raster,
        orientation,
    } = match original.format {
        ImageFormat::Jpeg => jpeg::decode(data, original, size.0.max(size.1))?,
        ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif => {
            decode_with_image(data, original)?
        }
    };
    let raster = drop_opaque_alpha(raster);
    let raster = resize(raster, size)?;
    let format = match target.output {
        OutputFormat::Auto if raster.layout.has_alpha() => ImageFormat::Png,
        OutputFormat::Auto | OutputFormat::Jpeg => ImageFormat::Jpeg,
        OutputFormat::Png => ImageFormat::Png,
    };
    let raster = match format {
        ImageFormat::Jpeg => composite_on_white(raster),
        _ => raster,
    };
    let raster = orient(raster, orientation)?;
    let bytes = match format {
        ImageFormat::Jpeg => jpeg::encode(&raster, target.jpeg_quality)?,
        _ => encode_png(&raster)?,
    };
    Ok(Encoded {
        bytes,
        format,
        width: raster.width,
        height: raster.height,
    })
}

/// Room for decoder state beyond the output raster (GIF canvas and frame, PNG rows, WebP).
const DECODE_ALLOC_SLACK: u64 = 16 << 20;

/// PNG, WebP and GIF through the `image` crate, never larger than the probe said, with an
/// allocation budget of what the largest sample type needs; the first frame of an animation.
fn decode_with_image(data: &[u8], original: Probe) -> Result<Decoded, ImageError> {
    let format = match original.format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::WebP => image::ImageFormat::WebP,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
    };
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(original.width);
    limits.max_image_height = Some(original.height);
    // 16-bit RGBA is the widest sample layout these formats decode to: 8 bytes a pixel.
    limits.max_alloc = Some(
        original
            .pixels()
            .saturating_mul(8)
            .saturating_add(DECODE_ALLOC_SLACK),
    );
    let mut reader = image::ImageReader::with_format(Cursor::new(data), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|_| ImageError::Decode)?;
    // A broken Exif chunk only loses the rotation, not the image.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|_| ImageError::Decode)?;
    let raster = Raster::from_dynamic(image);
    Ok(Decoded {
        raster,
        orientation,
    })
}

impl Raster {
    /// 8-bit samples of the same kind: no copy when they already are, else one conversion.
    fn from_dynamic(image: DynamicImage) -> Self {
        let (width, height) = (image.width(), image.height());
        let (buf, layout) = match image {
            DynamicImage::ImageLuma8(b) => (b.into_raw(), Layout::Gray),
            DynamicImage::ImageLumaA8(b) => (b.into_raw(), Layout::GrayAlpha),
            DynamicImage::ImageRgb8(b) => (b.into_raw(), Layout::Rgb),
            DynamicImage::ImageRgba8(b) => (b.into_raw(), Layout::Rgba),
            DynamicImage::ImageLuma16(_) => (image.into_luma8().into_raw(), Layout::Gray),
            DynamicImage::ImageLumaA16(_) => {
                (image.into_luma_alpha8().into_raw(), Layout::GrayAlpha)
            }
            other if other.color().has_alpha() => (other.into_rgba8().into_raw(), Layout::Rgba),
            other => (other.into_rgb8().into_raw(), Layout::Rgb),
        };
        Self {
            buf,
            width,
            height,
            layout,
        }
    }

    /// The same pixels as the `image` crate's type, for orientation and PNG encoding.
    fn into_dynamic(self) -> Result<DynamicImage, ImageError> {
        let (w, h, buf) = (self.width, self.height, self.buf);
        let image = match self.layout {
            Layout::Gray => ImageBuffer::from_raw(w, h, buf).map(DynamicImage::ImageLuma8),
            Layout::GrayAlpha => ImageBuffer::from_raw(w, h, buf).map(DynamicImage::ImageLumaA8),
            Layout::Rgb => ImageBuffer::from_raw(w, h, buf).map(DynamicImage::ImageRgb8),
            Layout::Rgba => ImageBuffer::from_raw(w, h, buf).map(DynamicImage::ImageRgba8),
        };
        image.ok_or(ImageError::Encode)
    }
}

/// Drops an alpha channel that is 255 everywhere, in place: the resize then moves fewer
/// channels, and "real transparency" (what picks PNG over JPEG) means exactly `has_alpha()`.
fn drop_opaque_alpha(mut raster: Raster) -> Raster {
    let channels = raster.layout.channels();
    if !raster.layout.has_alpha()
        || !raster
            .buf
            .chunks_exact(channels)
            .all(|px| px.last() == Some(&255))
    {
        return raster;
    }
    compact(&mut raster.buf, channels, |px, out| {
        out.copy_from_slice(&px[..channels - 1]);
    });
    raster.layout = raster.layout.without_alpha();
    raster
}

/// Composites a raster with alpha onto white (for JPEG, which has none), in place.
fn composite_on_white(mut raster: Raster) -> Raster {
    if !raster.layout.has_alpha() {
        return raster;
    }
    let channels = raster.layout.channels();
    compact(&mut raster.buf, channels, |px, out| {
        let alpha = u32::from(px[channels - 1]);
        for (o, &c) in out.iter_mut().zip(px) {
            let blended = (u32::from(c) * alpha + 255 * (255 - alpha) + 127) / 255;
            *o = u8::try_from(blended).unwrap_or(u8::MAX);
        }
    });
    raster.layout = raster.layout.without_alpha();
    raster
}

/// Rewrites pixels of `channels` samples as pixels of `channels - 1` samples, front to back in
/// the same buffer (each write lands at or before the read), then shortens it.
fn compact(buf: &mut Vec<u8>, channels: usize, convert: impl Fn(&[u8], &mut [u8])) {
    let pixels = buf.len() / channels;
    let out_channels = channels - 1;
    let mut px = [0u8; 4];
    for i in 0..pixels {
        let src = i * channels;
        px[..channels].copy_from_slice(&buf[src..src + channels]);
        let dst = i * out_channels;
        convert(&px[..channels], &mut buf[dst..dst + out_channels]);
    }
    buf.truncate(pixels * out_channels);
}

/// Resizes to exactly `size` with Lanczos3 (alpha premultiplied while filtering); a raster that
/// already has that size is returned as is. The source is freed before returning.
fn resize(raster: Raster, size: (u32, u32)) -> Result<Raster, ImageError> {
    if (raster.width, raster.height) == size {
        return Ok(raster);
    }
    let pixel_type = raster.layout.pixel_type();
    let mut dst = fir::images::Image::new(size.0, size.1, pixel_type);
    {
        let src = fir::images::ImageRef::new(raster.width, raster.height, &raster.buf, pixel_type)
            .map_err(|_| ImageError::Encode)?;
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3));
        fir::Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|_| ImageError::Encode)?;
    }
    Ok(Raster {
        buf: dst.into_vec(),
        width: size.0,
        height: size.1,
        layout: raster.layout,
    })
}

/// Turns the (already small) raster upright.
fn orient(raster: Raster, orientation: Orientation) -> Result<Raster, ImageError> {
    if orientation == Orientation::NoTransforms {
        return Ok(raster);
    }
    let layout = raster.layout;
    let mut image = raster.into_dynamic()?;
    image.apply_orientation(orientation);
    Ok(Raster {
        width: image.width(),
        height: image.height(),
        buf: image.into_bytes(),
        layout,
    })
}

/// PNG with fast compression and adaptive filtering: re-encoded PNGs are small already, and
/// the time goes to the request.
fn encode_png(raster: &Raster) -> Result<Bytes, ImageError> {
    let color = match raster.layout {
        Layout::Gray => image::ExtendedColorType::L8,
        Layout::GrayAlpha => image::ExtendedColorType::La8,
        Layout::Rgb => image::ExtendedColorType::Rgb8,
        Layout::Rgba => image::ExtendedColorType::Rgba8,
    };
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(&raster.buf, raster.width, raster.height, color)
    .map_err(|_| ImageError::Encode)?;
    Ok(Bytes::from(out))
}

/// JPEG through libjpeg-turbo: header facts, DCT-scaled decoding, encoding.
mod jpeg {
    use super::*;

    /// Progressive files with more scans than this are refused: a real encoder writes about
    /// ten, and each scan costs a pass over the whole coefficient buffer (the "scan bomb").
    const SCAN_LIMIT: u32 = 500;

    /// What the marker segments before the first scan say.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Meta {
        pub(super) orientation: Orientation,
        /// An Adobe APP14 segment: CMYK samples are stored inverted.
        pub(super) adobe: bool,
    }

    /// Reads APP1 Exif (orientation) and APP14 Adobe, stopping at the first scan.
    pub(super) fn meta(data: &[u8]) -> Meta {
        let mut meta = Meta {
            orientation: Orientation::NoTransforms,
            adobe: false,
        };
        let mut exif_seen = false;
        let mut pos = 2;
        while let (Some(&0xFF), Some(&marker)) = (data.get(pos), data.get(pos + 1)) {
            match marker {
                // Fill byte before a marker.
                0xFF => pos += 1,
                // Markers without a length.
                0x01 | 0xD0..=0xD8 => pos += 2,
                // Start of scan or end of image: no more header segments.
                0xDA | 0xD9 => break,
                _ => {
                    let Some(len) = data.get(pos + 2..pos + 4) else {
                        break;
                    };
                    // The length counts its own two bytes.
                    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                    let Some(body) = data.get(pos + 4..pos + 2 + len.max(2)) else {
                        break;
                    };
                    if marker == 0xE1 && !exif_seen && body.starts_with(b"Exif\0\0") {
                        exif_seen = true;
                        if let Some(o) = body.get(6..).and_then(Orientation::from_exif_chunk) {
                            meta.orientation = o;
                        }
                    } else if marker == 0xEE && body.starts_with(b"Adobe") {
                        meta.adobe = true;
                    }
                    pos += 2 + len.max(2);
                }
            }
        }
        meta
    }

    /// The smallest scale (at most 1) whose scaled long edge still reaches `target`, so the
    /// resize after it only ever shrinks. `ONE` when nothing smaller qualifies.
    pub(super) fn choose_scale(
        long: usize,
        target: usize,
        factors: &[ScalingFactor],
    ) -> ScalingFactor {
        factors
            .iter()
            .copied()
            .filter(|f| f.num() <= f.denom() && f.scale(long) >= target)
            .min_by(|a, b| (a.num() * b.denom()).cmp(&(b.num() * a.denom())))
            .unwrap_or(ScalingFactor::ONE)
    }

    /// Warnings after which libjpeg-turbo has still decoded every pixel: metadata it did not
    /// like, or junk between segments, which browsers show without complaint. Any other
    /// warning (truncation, bad Huffman codes) is a corrupt image. libjpeg reports only the
    /// first warning of a decode, so the text is all there is to go on.
    fn is_benign(error: &turbojpeg::Error) -> bool {
        const BENIGN: [&str; 4] = [
            "extraneous bytes before marker",
            "unknown JFIF revision",
            "Unknown Adobe color transform",
            "bad ICC marker",
        ];
        matches!(error, turbojpeg::Error::TurboJpegError(m) if BENIGN.iter().any(|b| m.contains(b)))
    }

    /// Decodes at the smallest M/8 scale whose long edge still reaches `target_long`. Grey
    /// stays grey; CMYK and YCCK are converted to RGB here (libjpeg-turbo hands them back as
    /// CMYK).
    pub(super) fn decode(
        data: &[u8],
        original: Probe,
        target_long: u32,
    ) -> Result<Decoded, ImageError> {
        let meta = meta(data);
        let mut decompressor = Decompressor::new().map_err(|_| ImageError::Decode)?;
        let header = decompressor
            .read_header(data)
            .map_err(|_| ImageError::Decode)?;
        // The pixel limit was checked against the probe; never decode something larger.
        let (width, height) = (original.width as usize, original.height as usize);
        if (header.width, header.height) != (width, height) {
            return Err(ImageError::Decode);
        }
        let factor = if header.is_lossless {
            ScalingFactor::ONE
        } else {
            choose_scale(
                width.max(height),
                target_long as usize,
                &Decompressor::supported_scaling_factors(),
            )
        };
        decompressor
            .set_scaling_factor(factor)
            .map_err(|_| ImageError::Decode)?;
        decompressor
            .set_scan_limit(SCAN_LIMIT)
            .map_err(|_| ImageError::Decode)?;
        let scaled = header.scaled(factor);
        let (format, layout) = match header.colorspace {
            Colorspace::Gray => (PixelFormat::GRAY, Layout::Gray),
            Colorspace::CMYK | Colorspace::YCCK => (PixelFormat::CMYK, Layout::Rgb),
            Colorspace::RGB | Colorspace::YCbCr => (PixelFormat::RGB, Layout::Rgb),
        };
        let pitch = scaled.width * format.size();
        let mut buf = vec![0u8; pitch * scaled.height];
        let image = turbojpeg::Image {
            pixels: buf.as_mut_slice(),
            width: scaled.width,
            pitch,
            height: scaled.height,
            format,
        };
        match decompressor.decompress(data, image) {
            Ok(()) => {}
            Err(e) if is_benign(&e) => {}
            Err(_) => return Err(ImageError::Decode),
        }
        drop(decompressor);
        if format == PixelFormat::CMYK {
            cmyk_to_rgb(&mut buf, meta.adobe);
        }
        let width = u32::try_from(scaled.width).map_err(|_| ImageError::Decode)?;
        let height = u32::try_from(scaled.height).map_err(|_| ImageError::Decode)?;
        Ok(Decoded {
            raster: Raster {
                buf,
                width,
                height,
                layout,
            },
            orientation: meta.orientation,
        })
    }

    /// Naive CMYK to RGB, in place. Adobe files (all YCCK ones, and most CMYK ones) store the
    /// samples inverted (255 = no ink), as Photoshop writes them; others store ink amounts.
    fn cmyk_to_rgb(buf: &mut Vec<u8>, adobe: bool) {
        compact(buf, 4, |px, out| {
            let ink = |v: u8| {
                if adobe {
                    u32::from(v)
                } else {
                    255 - u32::from(v)
                }
            };
            let k = ink(px[3]);
            for (o, &c) in out.iter_mut().zip(px) {
                *o = u8::try_from((ink(c) * k + 127) / 255).unwrap_or(u8::MAX);
            }
        });
    }

    /// Baseline JPEG at `quality`, 4:2:0 for colour, one component for grey.
    pub(super) fn encode(raster: &Raster, quality: u8) -> Result<Bytes, ImageError> {
        let (format, subsamp) = match raster.layout {
            Layout::Gray => (PixelFormat::GRAY, Subsamp::Gray),
            Layout::Rgb => (PixelFormat::RGB, Subsamp::Sub2x2),
            // Alpha is composited away before encoding.
            Layout::GrayAlpha | Layout::Rgba => return Err(ImageError::Encode),
        };
        let mut compressor = turbojpeg::Compressor::new().map_err(|_| ImageError::Encode)?;
        compressor
            .set_quality(i32::from(quality.clamp(1, 100)))
            .map_err(|_| ImageError::Encode)?;
        compressor
            .set_subsamp(subsamp)
            .map_err(|_| ImageError::Encode)?;
        let width = raster.width as usize;
        let image = turbojpeg::Image {
            pixels: raster.buf.as_slice(),
            width,
            pitch: width * format.size(),
            height: raster.height as usize,
            format,
        };
        let jpeg = compressor
            .compress_to_owned(image)
            .map_err(|_| ImageError::Encode)?;
        // libjpeg-turbo owns that buffer; one copy of the (small) result makes it shareable.
        Ok(Bytes::copy_from_slice(&jpeg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::gif::GifEncoder;
    use image::{Frame, GenericImageView as _, Rgba, RgbaImage};
    use proptest::prelude::*;

    fn target(max_edge: u32) -> Target {
        Target {
            max_edge,
            max_pixels: 50_000_000,
            output: OutputFormat::Auto,
            jpeg_quality: 85,
        }
    }

    /// A smooth colour gradient, so the encoders have something photo-like to chew on.
    fn gradient(width: u32, height: u32) -> Vec<u8> {
        let mut buf = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height {
            for x in 0..width {
                buf.push((x * 255 / width) as u8);
                buf.push((y * 255 / height) as u8);
                buf.push(((x + y) * 255 / (width + height)) as u8);
            }
        }
        buf
    }

    /// A JPEG from RGB samples with libjpeg-turbo.
    fn jpeg_from_rgb(rgb: &[u8], width: u32, height: u32, progressive: bool) -> Vec<u8> {
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(90).unwrap();
        c.set_subsamp(Subsamp::Sub2x2).unwrap();
        c.set_progressive(progressive).unwrap();
        let image = turbojpeg::Image {
            pixels: rgb,
            width: width as usize,
            pitch: width as usize * 3,
            height: height as usize,
            format: PixelFormat::RGB,
        };
        c.compress_to_vec(image).unwrap()
    }

    fn jpeg(width: u32, height: u32, progressive: bool) -> Bytes {
        Bytes::from(jpeg_from_rgb(
            &gradient(width, height),
            width,
            height,
            progressive,
        ))
    }

    fn encode_with_image(image: &DynamicImage, format: image::ImageFormat) -> Bytes {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        Bytes::from(out.into_inner())
    }

    fn png(image: &DynamicImage) -> Bytes {
        encode_with_image(image, image::ImageFormat::Png)
    }

    fn decode(bytes: &[u8]) -> DynamicImage {
        image::load_from_memory(bytes).unwrap()
    }

    /// Asserts what the output says about itself, from its own header.
    fn assert_output(p: &Prepared, format: ImageFormat, width: u32, height: u32) {
        let probe = sniff::probe(&p.bytes).unwrap();
        assert_eq!(
            (probe.format, probe.width, probe.height),
            (format, width, height)
        );
        assert_eq!((p.format, p.width, p.height), (format, width, height));
    }

    #[test]
    fn a_3000x2000_jpeg_is_downscaled_to_1024x683() {
        let p = prepare(jpeg(3000, 2000, false), &target(1024)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 1024, 683);
        assert_eq!(p.action, Action::Downscaled);
        assert_eq!((p.original.width, p.original.height), (3000, 2000));
        // The gradient survives: left is dark in red, right is bright.
        let out = decode(&p.bytes).to_rgb8();
        assert!(out.get_pixel(5, 340)[0] < 20);
        assert!(out.get_pixel(1018, 340)[0] > 235);
    }

    #[test]
    fn baseline_and_progressive_4000x3000_jpegs_are_both_downscaled() {
        for progressive in [false, true] {
            let input = jpeg(4000, 3000, progressive);
            assert_eq!(
                turbojpeg::read_header(&input).unwrap().is_progressive,
                progressive
            );
            let p = prepare(input, &target(1024)).unwrap();
            assert_output(&p, ImageFormat::Jpeg, 1024, 768);
            let out = decode(&p.bytes).to_rgb8();
            let px = out.get_pixel(512, 384);
            // The centre of the gradient: about half red, half green.
            assert!(
                (100..156).contains(&px[0]) && (100..156).contains(&px[1]),
                "{px:?}"
            );
        }
    }

    #[test]
    fn small_images_in_every_format_are_sent_unchanged_without_a_copy() {
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(64, 48, |x, y| {
            Rgba([x as u8 * 4, y as u8 * 5, 100, 255])
        }));
        let inputs = [
            (ImageFormat::Jpeg, jpeg(64, 48, false)),
            (ImageFormat::Png, png(&rgba)),
            (
                ImageFormat::WebP,
                encode_with_image(&rgba, image::ImageFormat::WebP),
            ),
            (
                ImageFormat::Gif,
                encode_with_image(&rgba, image::ImageFormat::Gif),
            ),
        ];
        for (format, input) in inputs {
            let p = prepare(input.clone(), &target(1024)).unwrap();
            assert_eq!(p.action, Action::Unchanged, "{format}");
            assert_eq!(p.bytes.as_ptr(), input.as_ptr(), "{format}");
            assert_eq!(p.bytes.len(), input.len());
            assert_eq!((p.format, p.width, p.height), (format, 64, 48));
        }
    }

    #[test]
    fn an_image_exactly_at_the_limit_is_not_touched_and_nothing_is_upscaled() {
        let input = jpeg(1024, 300, false);
        let p = prepare(input.clone(), &target(1024)).unwrap();
        assert_eq!(p.action, Action::Unchanged);
        assert_eq!(p.bytes.as_ptr(), input.as_ptr());
        // Far below the limit, and animated: re-encoded at its own size, not blown up.
        let p = prepare(animated_gif(), &target(4096)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 40, 30);
    }

    #[test]
    fn a_grey_jpeg_stays_grey() {
        let (w, h) = (2400, 1600);
        let grey: Vec<u8> = (0..w * h).map(|i| (i % w * 255 / w) as u8).collect();
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_subsamp(Subsamp::Gray).unwrap();
        let input = c
            .compress_to_vec(turbojpeg::Image {
                pixels: grey.as_slice(),
                width: w as usize,
                pitch: w as usize,
                height: h as usize,
                format: PixelFormat::GRAY,
            })
            .unwrap();
        let p = prepare(Bytes::from(input), &target(1024)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 1024, 683);
        let header = turbojpeg::read_header(&p.bytes).unwrap();
        assert_eq!(header.colorspace, Colorspace::Gray);
        assert_eq!(decode(&p.bytes).color(), image::ColorType::L8);
    }

    /// A YCCK JPEG (Adobe marker, inverted CMYK as Photoshop stores it) in two halves: red on
    /// the left (no cyan, full magenta and yellow), blue on the right (full cyan and magenta).
    fn cmyk_jpeg(width: u32, height: u32) -> Vec<u8> {
        let mut cmyk = Vec::with_capacity(width as usize * height as usize * 4);
        for _ in 0..height {
            for x in 0..width {
                let ink: [u8; 4] = if x < width / 2 {
                    [0, 255, 255, 0]
                } else {
                    [255, 255, 0, 0]
                };
                // Inverted: 255 means no ink.
                cmyk.extend(ink.iter().map(|v| 255 - v));
            }
        }
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(95).unwrap();
        c.compress_to_vec(turbojpeg::Image {
            pixels: cmyk.as_slice(),
            width: width as usize,
            pitch: width as usize * 4,
            height: height as usize,
            format: PixelFormat::CMYK,
        })
        .unwrap()
    }

    #[test]
    fn a_cmyk_jpeg_decodes_with_sane_colours() {
        let input = cmyk_jpeg(2048, 1024);
        let header = turbojpeg::read_header(&input).unwrap();
        assert_eq!(header.colorspace, Colorspace::YCCK);
        assert!(jpeg::meta(&input).adobe);
        let p = prepare(Bytes::from(input.clone()), &target(1024)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 1024, 512);
        let out = decode(&p.bytes).to_rgb8();
        let red = out.get_pixel(200, 256);
        let blue = out.get_pixel(800, 256);
        assert!(red[0] > 230 && red[1] < 25 && red[2] < 25, "{red:?}");
        assert!(blue[0] < 25 && blue[1] < 25 && blue[2] > 230, "{blue:?}");
        // Another decoder (zune-jpeg, via `image`) agrees on the colours.
        let other = decode(&input).to_rgb8();
        for (ours, theirs) in [
            (red, other.get_pixel(400, 512)),
            (blue, other.get_pixel(1600, 512)),
        ] {
            for c in 0..3 {
                assert!(ours[c].abs_diff(theirs[c]) < 25, "{ours:?} vs {theirs:?}");
            }
        }
    }

    #[test]
    fn a_16_bit_png_is_downscaled() {
        let image = DynamicImage::ImageRgb16(ImageBuffer::from_fn(1600, 1200, |x, _| {
            image::Rgb([(x * 40) as u16, 30000, 65535])
        }));
        let p = prepare(png(&image), &target(800)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 800, 600);
        let px = decode(&p.bytes).to_rgb8().get_pixel(400, 300).0;
        assert!(
            px[0].abs_diff(125) < 10 && px[1].abs_diff(117) < 8 && px[2] > 245,
            "{px:?}"
        );
    }

    /// A palette PNG: four colours, the last one half transparent when `trns` is set.
    fn palette_png(width: u32, height: u32, trns: bool) -> Bytes {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]);
        if trns {
            encoder.set_trns(vec![255, 255, 255, 128]);
        }
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..width * height)
            .map(|i| ((i % width) * 4 / width) as u8)
            .collect();
        writer.write_image_data(&data).unwrap();
        writer.finish().unwrap();
        Bytes::from(out)
    }

    #[test]
    fn a_palette_png_is_downscaled() {
        let p = prepare(palette_png(2000, 500, false), &target(1000)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 1000, 250);
        let out = decode(&p.bytes).to_rgb8();
        assert!(out.get_pixel(100, 100)[0] > 230);
        assert!(out.get_pixel(380, 100)[1] > 230);
        // With a transparent palette entry the output keeps its alpha, as PNG.
        let p = prepare(palette_png(2000, 500, true), &target(1000)).unwrap();
        assert_output(&p, ImageFormat::Png, 1000, 250);
        assert_eq!(decode(&p.bytes).get_pixel(900, 100)[3], 128);
    }

    #[test]
    fn a_grey_alpha_png_keeps_grey_and_alpha() {
        let image = DynamicImage::ImageLumaA8(ImageBuffer::from_fn(1200, 1200, |x, _| {
            image::LumaA([200, if x < 600 { 255 } else { 0 }])
        }));
        let p = prepare(png(&image), &target(600)).unwrap();
        assert_output(&p, ImageFormat::Png, 600, 600);
        let out = decode(&p.bytes);
        assert_eq!(out.color(), image::ColorType::La8);
        assert_eq!(out.get_pixel(10, 10), Rgba([200, 200, 200, 255]));
        assert_eq!(out.get_pixel(590, 10)[3], 0);
    }

    fn half_transparent_rgba(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, _| {
            Rgba([0, 0, 255, if x < width / 2 { 255 } else { 0 }])
        }))
    }

    #[test]
    fn an_rgba_png_with_real_transparency_becomes_png() {
        let p = prepare(png(&half_transparent_rgba(2000, 1000)), &target(1000)).unwrap();
        assert_output(&p, ImageFormat::Png, 1000, 500);
        let out = decode(&p.bytes);
        assert_eq!(out.color(), image::ColorType::Rgba8);
        assert_eq!(out.get_pixel(10, 10), Rgba([0, 0, 255, 255]));
        assert_eq!(out.get_pixel(990, 10)[3], 0);
    }

    #[test]
    fn a_fully_opaque_rgba_png_becomes_jpeg() {
        let image = DynamicImage::ImageRgba8(RgbaImage::from_fn(3000, 1500, |x, y| {
            Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
        }));
        let p = prepare(png(&image), &target(1024)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 1024, 512);
        assert_eq!(p.action, Action::Downscaled);
    }

    #[test]
    fn the_configured_output_format_wins_over_auto() {
        let input = png(&half_transparent_rgba(2000, 1000));
        let as_jpeg = Target {
            output: OutputFormat::Jpeg,
            ..target(1000)
        };
        let p = prepare(input, &as_jpeg).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 1000, 500);
        // Transparent pixels were composited on white.
        let out = decode(&p.bytes).to_rgb8();
        assert!(out.get_pixel(10, 10)[2] > 240 && out.get_pixel(10, 10)[0] < 15);
        assert!(out.get_pixel(990, 10).0.iter().all(|&c| c > 245));
        let as_png = Target {
            output: OutputFormat::Png,
            ..target(1024)
        };
        let p = prepare(jpeg(3000, 2000, false), &as_png).unwrap();
        assert_output(&p, ImageFormat::Png, 1024, 683);
        assert_eq!(decode(&p.bytes).color(), image::ColorType::Rgb8);
    }

    /// Two 40x30 frames: red, then blue.
    fn animated_gif() -> Bytes {
        let mut out = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut out);
            let frames = [[255, 0, 0, 255], [0, 0, 255, 255]]
                .map(|c| Frame::new(RgbaImage::from_pixel(40, 30, Rgba(c))));
            encoder.encode_frames(frames).unwrap();
        }
        Bytes::from(out)
    }

    #[test]
    fn an_animated_gif_is_reencoded_as_its_first_frame() {
        let input = animated_gif();
        assert!(gif_has_second_frame(&input));
        let p = prepare(input, &target(1024)).unwrap();
        assert_eq!(p.action, Action::Reencoded);
        assert_output(&p, ImageFormat::Jpeg, 40, 30);
        let px = decode(&p.bytes).to_rgb8().get_pixel(20, 15).0;
        assert!(px[0] > 240 && px[2] < 15, "{px:?}");
    }

    #[test]
    fn an_apng_is_animated_and_a_plain_png_is_not() {
        let plain = png(&DynamicImage::ImageRgb8(image::RgbImage::new(8, 8)));
        assert!(!is_animated(ImageFormat::Png, &plain));
        // Insert an acTL chunk (2 frames, loop forever) right after IHDR: an APNG header.
        let mut apng = plain[..33].to_vec();
        let body = [0, 0, 0, 2, 0, 0, 0, 0];
        apng.extend_from_slice(&8u32.to_be_bytes());
        apng.extend_from_slice(b"acTL");
        apng.extend_from_slice(&body);
        apng.extend_from_slice(&[0, 0, 0, 0]); // CRC, not checked by the walk
        apng.extend_from_slice(&plain[33..]);
        assert!(is_animated(ImageFormat::Png, &apng));
        assert!(
            !is_animated(ImageFormat::Png, &plain[..20]),
            "truncated: no clear yes"
        );
    }

    #[test]
    fn a_small_image_padded_with_junk_is_reencoded_not_passed_on() {
        let mut padded = png(&DynamicImage::ImageRgb8(image::RgbImage::new(8, 8))).to_vec();
        padded.extend(std::iter::repeat_n(0u8, 300 * 1024)); // after IEND: junk
        let p = prepare(Bytes::from(padded), &target(1024)).unwrap();
        assert_eq!(p.action, Action::Reencoded);
        assert!(p.bytes.len() < 10_000, "{} bytes", p.bytes.len());
        assert!(is_bloated(300 * 1024, 8 * 8));
        assert!(
            !is_bloated(3_000_000, 1024 * 1024),
            "a big but honest photo"
        );
    }

    #[test]
    fn a_single_frame_gif_is_not_animated() {
        let still = encode_with_image(&half_transparent_rgba(40, 30), image::ImageFormat::Gif);
        assert!(!gif_has_second_frame(&still));
        assert!(!gif_has_second_frame(b"GIF89a"));
        assert!(!gif_has_second_frame(&still[..still.len() / 2]));
    }

    fn chunk(fourcc: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut c = fourcc.to_vec();
        c.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        c.extend_from_slice(payload);
        if payload.len() % 2 == 1 {
            c.push(0);
        }
        c
    }

    fn u24(v: u32) -> [u8; 3] {
        let b = v.to_le_bytes();
        [b[0], b[1], b[2]]
    }

    /// An animated WebP by hand: VP8X (animation flag), ANIM, and two ANMF frames holding
    /// lossless frames from `image`'s encoder: red, then blue.
    fn animated_webp(width: u32, height: u32) -> Bytes {
        let mut body = b"WEBP".to_vec();
        let mut vp8x = vec![0x02, 0, 0, 0];
        vp8x.extend(u24(width - 1));
        vp8x.extend(u24(height - 1));
        body.extend(chunk(b"VP8X", &vp8x));
        body.extend(chunk(b"ANIM", &[0, 0, 0, 0, 0, 0]));
        for colour in [[255, 0, 0, 255], [0, 0, 255, 255]] {
            let frame =
                DynamicImage::ImageRgba8(RgbaImage::from_pixel(width, height, Rgba(colour)));
            let still = encode_with_image(&frame, image::ImageFormat::WebP);
            // A simple WebP is RIFF, size, WEBP, then one VP8L chunk.
            assert_eq!(&still[12..16], b"VP8L");
            let mut anmf = Vec::new();
            anmf.extend(u24(0));
            anmf.extend(u24(0));
            anmf.extend(u24(width - 1));
            anmf.extend(u24(height - 1));
            anmf.extend(u24(100));
            anmf.push(0);
            anmf.extend_from_slice(&still[12..]);
            body.extend(chunk(b"ANMF", &anmf));
        }
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend(body);
        Bytes::from(file)
    }

    #[test]
    fn an_animated_webp_is_reencoded_as_its_first_frame() {
        let input = animated_webp(48, 32);
        assert!(is_animated(ImageFormat::WebP, &input));
        let p = prepare(input, &target(1024)).unwrap();
        assert_eq!(p.action, Action::Reencoded);
        assert_output(&p, ImageFormat::Jpeg, 48, 32);
        let px = decode(&p.bytes).to_rgb8().get_pixel(24, 16).0;
        assert!(px[0] > 240 && px[2] < 15, "{px:?}");
    }

    /// An APP1 Exif segment (big-endian TIFF, one IFD entry: Orientation) right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Bytes {
        let mut tiff = b"MM\0\x2A\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&0x0112u16.to_be_bytes());
        tiff.extend_from_slice(&3u16.to_be_bytes());
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes());
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        segment.extend_from_slice(b"Exif\0\0");
        segment.extend(tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend(segment);
        out.extend_from_slice(&jpeg[2..]);
        Bytes::from(out)
    }

    #[test]
    fn exif_orientation_6_turns_the_output_upright() {
        // Red on the left, blue on the right, as stored.
        let (w, h) = (2000, 1000);
        let mut rgb = Vec::with_capacity(w * h * 3);
        for _ in 0..h {
            for x in 0..w {
                rgb.extend(if x < w / 2 { [255, 0, 0] } else { [0, 0, 255] });
            }
        }
        let input = with_exif_orientation(&jpeg_from_rgb(&rgb, w as u32, h as u32, false), 6);
        assert_eq!(jpeg::meta(&input).orientation, Orientation::Rotate90);
        let p = prepare(input, &target(1024)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 512, 1024);
        // Rotated 90 degrees clockwise: the stored left (red) is now the top.
        let out = decode(&p.bytes).to_rgb8();
        assert!(
            out.get_pixel(256, 100)[0] > 230,
            "{:?}",
            out.get_pixel(256, 100)
        );
        assert!(
            out.get_pixel(256, 900)[2] > 230,
            "{:?}",
            out.get_pixel(256, 900)
        );
    }

    #[test]
    fn jpeg_meta_reads_orientation_and_adobe_and_survives_junk() {
        let plain = jpeg(16, 16, false);
        let meta = jpeg::meta(&plain);
        assert_eq!(meta.orientation, Orientation::NoTransforms);
        assert!(!meta.adobe);
        let rotated = with_exif_orientation(&plain, 8);
        assert_eq!(jpeg::meta(&rotated).orientation, Orientation::Rotate270);
        for cut in 0..rotated.len().min(80) {
            let _ = jpeg::meta(&rotated[..cut]);
        }
        let _ = jpeg::meta(b"\xFF\xD8\xFF\xE1\x00\x00\xFF\xE1\x00\x01");
    }

    #[test]
    fn a_truncated_jpeg_is_a_decode_error() {
        let input = jpeg(3000, 2000, false);
        for keep in [input.len() / 2, 700, 400] {
            let cut = input.slice(..keep);
            assert_eq!(
                prepare(cut, &target(1024)),
                Err(ImageError::Decode),
                "{keep}"
            );
        }
        let progressive = jpeg(3000, 2000, true);
        let cut = progressive.slice(..progressive.len() / 2);
        assert_eq!(prepare(cut, &target(1024)), Err(ImageError::Decode));
    }

    #[test]
    fn junk_before_the_end_of_a_jpeg_is_tolerated_like_browsers_do() {
        let clean = jpeg(2000, 1000, false);
        // Stray bytes before EOI (some cameras pad so): libjpeg warns "extraneous bytes before
        // marker 0xd9" after it has decoded every pixel.
        let eoi = clean.len() - 2;
        let mut junk = clean[..eoi].to_vec();
        junk.extend_from_slice(&[0xFF, 0x00, 0x12, 0x34]);
        junk.extend_from_slice(&clean[eoi..]);
        let p = prepare(Bytes::from(junk), &target(1000)).unwrap();
        assert_output(&p, ImageFormat::Jpeg, 1000, 500);
    }

    #[test]
    fn truncated_png_gif_and_webp_are_decode_errors() {
        let image = DynamicImage::ImageRgb8(ImageBuffer::from_fn(1100, 300, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 256) as u8])
        }));
        for format in [
            image::ImageFormat::Png,
            image::ImageFormat::Gif,
            image::ImageFormat::WebP,
        ] {
            let input = encode_with_image(&image, format);
            let cut = input.slice(..input.len() / 2);
            assert_eq!(
                prepare(cut, &target(1000)),
                Err(ImageError::Decode),
                "{format:?}"
            );
        }
    }

    #[test]
    fn text_is_a_probe_error() {
        let err = prepare(
            Bytes::from_static(b"<!doctype html><p>not an image"),
            &target(1024),
        );
        assert_eq!(err, Err(ImageError::Probe(ProbeError::UnknownFormat)));
        assert_eq!(
            err.unwrap_err().to_string(),
            "the data is not a usable image: it is not a JPEG, PNG, WebP or GIF image"
        );
    }

    #[test]
    fn a_png_declaring_30000x30000_is_refused_before_decoding() {
        let mut input = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        input.extend_from_slice(&30000u32.to_be_bytes());
        input.extend_from_slice(&30000u32.to_be_bytes());
        input.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        // 900 KB of "pixel data" that is never looked at.
        input.resize(900_000, 0x55);
        let err = prepare(Bytes::from(input), &target(1024)).unwrap_err();
        assert_eq!(
            err,
            ImageError::TooManyPixels {
                width: 30000,
                height: 30000,
                pixels: 900_000_000,
                limit: 50_000_000
            }
        );
        assert_eq!(
            err.to_string(),
            "the image is 30000x30000 = 900000000 pixels; this gateway accepts at most 50000000 \
             (images.max_pixels)"
        );
        assert_eq!(
            ImageError::Decode.to_string(),
            "the image could not be decoded (corrupt or truncated)"
        );
    }

    #[test]
    fn opaque_alpha_is_dropped_and_real_alpha_kept() {
        let opaque = Raster {
            buf: vec![1, 2, 3, 255, 4, 5, 6, 255],
            width: 2,
            height: 1,
            layout: Layout::Rgba,
        };
        let r = drop_opaque_alpha(opaque);
        assert_eq!((r.layout, r.buf), (Layout::Rgb, vec![1, 2, 3, 4, 5, 6]));
        let grey = Raster {
            buf: vec![9, 255, 8, 0],
            width: 2,
            height: 1,
            layout: Layout::GrayAlpha,
        };
        let r = drop_opaque_alpha(grey);
        assert_eq!(r.layout, Layout::GrayAlpha);
        let r = composite_on_white(r);
        assert_eq!((r.layout, r.buf), (Layout::Gray, vec![9, 255]));
    }

    #[test]
    fn scale_factors_for_common_photos() {
        let factors = Decompressor::supported_scaling_factors();
        let pick = |long, target| {
            let f = jpeg::choose_scale(long, target, &factors);
            (f.num(), f.denom())
        };
        assert_eq!(pick(5640, 1024), (1, 4));
        assert_eq!(pick(4000, 1024), (3, 8));
        assert_eq!(pick(3000, 1024), (3, 8));
        assert_eq!(pick(2048, 1024), (1, 2));
        assert_eq!(pick(1100, 1024), (1, 1));
        assert_eq!(pick(20000, 1024), (1, 8));
    }

    proptest! {
        #[test]
        fn fit_never_upscales_and_keeps_the_aspect(
            w in 1u32..200_000,
            h in 1u32..200_000,
            max_edge in 1u32..20_000,
        ) {
            let (fw, fh) = fit(w, h, max_edge);
            let long = w.max(h);
            prop_assert!(fw >= 1 && fh >= 1);
            prop_assert!(fw <= w && fh <= h);
            prop_assert_eq!(fw.max(fh), max_edge.min(long));
            // Within one pixel of the exact aspect: |fw/fh - w/h| measured on the short side.
            let (short, fshort, flong) = if w >= h { (h, fh, fw) } else { (w, fw, fh) };
            let exact = u64::from(short) * u64::from(flong);
            let got = u64::from(fshort) * u64::from(long);
            prop_assert!(exact.abs_diff(got) <= u64::from(long), "{w}x{h} -> {fw}x{fh}");
        }

        #[test]
        fn the_scale_is_the_smallest_that_still_reaches_the_target(
            (long, target) in (1usize..100_000).prop_flat_map(|l| (Just(l), 1..=l)),
        ) {
            let factors = Decompressor::supported_scaling_factors();
            let chosen = jpeg::choose_scale(long, target, &factors);
            prop_assert!(chosen.num() <= chosen.denom());
            prop_assert!(chosen.scale(long) >= target);
            let ratio = |f: &ScalingFactor| f.num() as f64 / f.denom() as f64;
            let next_smaller = factors
                .iter()
                .filter(|f| ratio(f) < ratio(&chosen))
                .max_by(|a, b| ratio(a).total_cmp(&ratio(b)));
            if let Some(f) = next_smaller {
                prop_assert!(f.scale(long) < target, "{f} of {long} reaches {target}");
            }
        }
    }
}
