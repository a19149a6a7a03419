//! The photos the image benches measure, shared by `benches/images.rs` and
//! `benches/image_memory.rs`.
//!
//! The real fixture is an 18-megapixel photo from Debian's `mate-backgrounds`
//! (`Elephants_5640x3172.jpg`, progressive, 16 MB) and its baseline twin written by `vips`
//! (`benches/images/compare.sh` installs both tools). Without them the benches fall back to a
//! generated 5640x3172 picture encoded both ways by libjpeg-turbo, and say so.

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;

/// The Debian photo: progressive JPEG, 5640x3172.
pub const PHOTO: &str = "/usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg";

/// Where the prepared pair lives (next to criterion's own output).
pub fn dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-images")
}

/// `(name, bytes)` for the baseline and the progressive photo, preparing them when missing.
pub fn photos() -> Vec<(&'static str, Bytes)> {
    let dir = dir();
    let baseline = dir.join("baseline.jpg");
    let progressive = dir.join("progressive.jpg");
    if !(baseline.exists() && progressive.exists()) {
        std::fs::create_dir_all(&dir).unwrap();
        if !prepare_real(&baseline, &progressive) {
            eprintln!(
                "bench-images: {PHOTO} or vips missing (run benches/images/compare.sh to \
                 install them); using a generated 5640x3172 picture instead"
            );
            let (b, p) = generated(5640, 3172);
            std::fs::write(&baseline, b).unwrap();
            std::fs::write(&progressive, p).unwrap();
        }
    }
    vec![
        ("baseline", Bytes::from(std::fs::read(&baseline).unwrap())),
        (
            "progressive",
            Bytes::from(std::fs::read(&progressive).unwrap()),
        ),
    ]
}

/// The Debian photo as it is (progressive) and re-saved by vips as baseline Q90, no metadata.
fn prepare_real(baseline: &std::path::Path, progressive: &std::path::Path) -> bool {
    if std::fs::copy(PHOTO, progressive).is_err() {
        return false;
    }
    let out = format!("{}[Q=90,strip]", baseline.display());
    let ok = Command::new("vips")
        .args(["copy", PHOTO, &out])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = std::fs::remove_file(progressive);
    }
    ok
}

/// A photo-like stand-in: gradients plus fine deterministic noise (so the entropy coder has
/// real work), encoded baseline and progressive at quality 90.
fn generated(width: usize, height: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rgb = Vec::with_capacity(width * height * 3);
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    for y in 0..height {
        for x in 0..width {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state & 31) as usize;
            rgb.push(((x * 255 / width + noise) % 256) as u8);
            rgb.push(((y * 255 / height + noise) % 256) as u8);
            rgb.push((((x + y) * 255 / (width + height) + noise) % 256) as u8);
        }
    }
    let encode = |progressive| {
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(90).unwrap();
        c.set_subsamp(turbojpeg::Subsamp::Sub2x2).unwrap();
        c.set_progressive(progressive).unwrap();
        let image = turbojpeg::Image {
            pixels: rgb.as_slice(),
            width,
            pitch: width * 3,
            height,
            format: turbojpeg::PixelFormat::RGB,
        };
        c.compress_to_vec(image).unwrap()
    };
    (encode(false), encode(true))
}
