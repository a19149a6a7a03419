//! The image pipeline, measured with criterion on real 18-megapixel photos.
//!
//! - `prepare_18mp/prepare_base64/{baseline,progressive}`: `prepare()` to a 1024 long edge
//!   (decode with DCT scaling, resize, encode JPEG q85) plus the base64 of the result: the
//!   whole CPU cost of one image in a request.
//! - `prepare_18mp/full_decode/{baseline,progressive}`: the baseline in the same run, a plain
//!   full-size libjpeg-turbo decode of the same file (what any pipeline without DCT scaling
//!   pays before it has even started resizing).
//! - `parallel/{one_photo,twelve_photos_one_thread,twelve_photos_two_threads}`: twelve
//!   baseline photos through `prepare()` on two threads against one photo (the target ratio),
//!   and against the same twelve on one thread (the speed-up two threads really give here);
//!   `parallel/cpu_reference_*`: twelve units of pure integer work on one and two threads, the
//!   speed-up this machine gives at all.
//!
//! Fixtures: `benches/images/fixtures.rs` (the Debian photo and its vips baseline twin,
//! prepared on first use). Comparison with vips and Pillow on one core:
//! `bash benches/images/compare.sh`. Run alone: `cargo bench --bench images`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "benchmark set-up")]

#[path = "images/fixtures.rs"]
mod fixtures;

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vision_gateway::config::OutputFormat;
use vision_gateway::images::transform::{Target, prepare};

const TARGET: Target = Target {
    max_edge: 1024,
    max_pixels: 50_000_000,
    output: OutputFormat::Auto,
    jpeg_quality: 85,
};

/// What a request pays for one image: prepare, then base64 for the data URI.
fn prepare_base64(input: &Bytes) -> String {
    let prepared = prepare(input.clone(), &TARGET).unwrap();
    STANDARD.encode(&prepared.bytes)
}

fn full_decode(input: &[u8]) -> usize {
    turbojpeg::decompress(input, turbojpeg::PixelFormat::RGB)
        .unwrap()
        .pixels
        .len()
}

fn one_image(c: &mut Criterion) {
    let photos = fixtures::photos();
    let mut g = c.benchmark_group("prepare_18mp");
    g.sample_size(15)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    for (name, bytes) in &photos {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("prepare_base64", name),
            bytes,
            |b, input| b.iter(|| prepare_base64(black_box(input))),
        );
        g.bench_with_input(BenchmarkId::new("full_decode", name), bytes, |b, input| {
            b.iter(|| full_decode(black_box(input)))
        });
    }
    g.finish();
}

fn parallel(c: &mut Criterion) {
    let photos = fixtures::photos();
    let baseline = photos[0].1.clone();
    let mut g = c.benchmark_group("parallel");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_photo", |b| {
        b.iter(|| prepare_base64(black_box(&baseline)))
    });
    g.throughput(Throughput::Elements(12));
    for threads in [1, 2] {
        let name = ["", "twelve_photos_one_thread", "twelve_photos_two_threads"][threads];
        g.bench_function(name, |b| {
            b.iter(|| twelve_units(threads, || drop(black_box(prepare_base64(&baseline)))))
        });
    }
    // The machine's own two-thread speed-up for pure CPU work (no memory traffic, no
    // allocation), in the same run: the best the image pipeline could do here.
    for threads in [1, 2] {
        let name = ["", "cpu_reference_one_thread", "cpu_reference_two_threads"][threads];
        g.bench_function(name, |b| b.iter(|| twelve_units(threads, spin)));
    }
    g.finish();
}

/// Twelve units of work shared out to `threads` threads, each taking the next one until none
/// is left (as the blocking pool would).
fn twelve_units(threads: usize, unit: impl Fn() + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < 12 {
                    unit();
                }
            });
        }
    });
}

/// About 20 ms of integer arithmetic in registers.
fn spin() {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15_u64);
    for _ in 0..20_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x);
}

criterion_group!(benches, one_image, parallel);
criterion_main!(benches);
