//! Peak memory that `prepare()` (plus base64) adds for one image, measured two ways in a
//! fresh process per file, printed as one JSON line:
//!
//! - `heap_peak`: Rust heap high-water mark minus what was live before (a counting global
//!   allocator, `peak_alloc`). libjpeg-turbo's own `malloc`s are not in it.
//! - `rss_peak`: `VmHWM` minus `VmRSS` before the call, after resetting the high-water mark
//!   (`/proc/self/clear_refs` = 5). Everything the process touched, C libraries included.
//!
//! Run: `cargo bench --bench image_memory -- FILE [OUT]` (one file per process, so freed
//! memory of an earlier image cannot hide in the allocator; OUT receives the prepared image).
//! Without a file it measures the baseline fixture.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "benchmark set-up")]

#[path = "images/fixtures.rs"]
mod fixtures;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use peak_alloc::PeakAlloc;
use vision_gateway::config::OutputFormat;
use vision_gateway::images::transform::{Target, prepare};

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// A `/proc/self/status` field in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn main() {
    // `cargo bench` passes `--bench`; the input file (and where to write the output, if
    // given) are the other arguments.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let file = args.next();
    let save_to = args.next();
    let (name, input) = match &file {
        Some(path) => (path.clone(), Bytes::from(std::fs::read(path).unwrap())),
        None => {
            let (name, bytes) = fixtures::photos().swap_remove(0);
            (name.to_string(), bytes)
        }
    };
    let target = Target {
        max_edge: 1024,
        max_pixels: 50_000_000,
        output: OutputFormat::Auto,
        jpeg_quality: 85,
    };
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let rss_before = status_bytes("VmRSS:");
    HEAP.reset_peak_usage();
    let heap_before = HEAP.current_usage();

    let prepared = prepare(input.clone(), &target).unwrap();
    let encoded = STANDARD.encode(&prepared.bytes);

    let heap_peak = HEAP.peak_usage() - heap_before;
    let rss_peak = status_bytes("VmHWM:").saturating_sub(rss_before);
    if let Some(path) = save_to {
        std::fs::write(path, &prepared.bytes).unwrap();
    }
    println!(
        "{{\"file\":\"{name}\",\"file_bytes\":{},\"output\":\"{}x{} {}\",\"output_bytes\":{},\
         \"base64_bytes\":{},\"heap_peak\":{heap_peak},\"rss_peak\":{rss_peak}}}",
        input.len(),
        prepared.width,
        prepared.height,
        prepared.format,
        prepared.bytes.len(),
        encoded.len(),
    );
}
