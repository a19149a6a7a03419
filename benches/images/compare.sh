#!/usr/bin/env bash
# The image pipeline against vips and Pillow, on ONE core, in one run, on a real 18-megapixel
# photo saved both ways (baseline and progressive JPEG), to a 1024 long edge:
#
#   ours    criterion: prepare() + base64 (benches/images.rs, group prepare_18mp)
#   vips    vipsthumbnail -s 1024 in.jpg -o out.jpg[Q=85], timed by hyperfine (a process per
#           run, so its start-up is in it: a 64x64 image shows how much), and the same in-process
#           through pyvips (thumbnail_buffer, jpegsave_buffer Q=85, base64), VIPS_CONCURRENCY=1
#   Pillow  in-process: open, draft('RGB', (1024, 1024)), thumbnail(LANCZOS), JPEG q85 into
#           BytesIO, base64
#
# then peak memory per image for ours (benches/image_memory.rs, a fresh process per file) and
# twelve baseline photos on two threads against one (criterion group `parallel`, not pinned).
# Prints a Markdown summary with each target marked met or MISSED and writes it to
# target/bench-images/results.md.
#
# Run: bash benches/images/compare.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# ---- knobs (environment) -------------------------------------------------------------
CORE=${CORE:-0}                 # the one core every timed run is pinned to
RUNS=${RUNS:-20}                # hyperfine runs and Pillow iterations per file
WARMUP=${WARMUP:-3}             # unrecorded runs before those
SKIP_INSTALL=${SKIP_INSTALL:-0} # 1: never apt-get or pip
SKIP_PARALLEL=${SKIP_PARALLEL:-0}
VENV=${VENV:-$ROOT/.venv-bench} # Pillow lives here
PHOTO=/usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET_DIR/bench-images
CRITERION=$TARGET_DIR/criterion

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---- 1. what it needs ------------------------------------------------------------------
if [ "$SKIP_INSTALL" != 1 ]; then
    missing=()
    [ -f "$PHOTO" ] || missing+=(mate-backgrounds)
    { have vips && have vipsthumbnail; } || missing+=(libvips-tools)
    have hyperfine || missing+=(hyperfine)
    have taskset || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "python venv at $VENV"
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c 'import PIL, pyvips' 2>/dev/null; then
        log "pip install pillow pyvips"
        "$VENV/bin/pip" install -q pillow pyvips
    fi
fi
[ -f "$PHOTO" ] || die "$PHOTO missing (apt-get install mate-backgrounds)"
for tool in vips vipsthumbnail hyperfine taskset cargo; do have "$tool" || die "$tool missing"; done
PY="$VENV/bin/python"
"$PY" -c 'import PIL, pyvips' 2>/dev/null || die "Pillow or pyvips missing in $VENV"

# ---- 2. the photo pair -----------------------------------------------------------------
mkdir -p "$OUT"
[ -f "$OUT/progressive.jpg" ] || cp "$PHOTO" "$OUT/progressive.jpg"
[ -f "$OUT/baseline.jpg" ] || vips copy "$PHOTO" "$OUT/baseline.jpg[Q=90,strip]"
# A 64x64 JPEG: vipsthumbnail on it is almost only process start-up and library init.
[ -f "$OUT/tiny.jpg" ] || vips thumbnail "$OUT/baseline.jpg" "$OUT/tiny.jpg[Q=90,strip]" 64

# ---- 3. timings on one core --------------------------------------------------------------
# CPU already busy (other processes) over 2 s, in % of all cores: anything but ~0 skews the run.
cpu_busy() {
    read -r _ a b c idle1 iow1 rest1 < /proc/stat
    local t1=$((a + b + c + idle1 + iow1)); sleep 2
    read -r _ a b c idle2 iow2 rest2 < /proc/stat
    local t2=$((a + b + c + idle2 + iow2))
    echo $((100 - 100 * (idle2 + iow2 - idle1 - iow1) / (t2 - t1)))
}
BUSY=$(cpu_busy)
echo "$BUSY" >"$OUT/busy.txt"
[ "$BUSY" -le 5 ] || log "WARNING: the cores are already ${BUSY}% busy; the figures will be skewed"
log "building the benches (all cores)"
(cd "$ROOT" && cargo bench --bench images --bench image_memory --no-run -q 2>&1 | grep -v '^ *Executable' || true)

log "ours: criterion prepare_18mp on core $CORE"
rm -rf "$CRITERION/prepare_18mp"
(cd "$ROOT" && taskset -c "$CORE" cargo bench -q --bench images -- prepare_18mp/ >"$OUT/criterion-one-core.txt" 2>&1) \
    || { cat "$OUT/criterion-one-core.txt"; die "criterion failed"; }

log "vips: vipsthumbnail under hyperfine on core $CORE"
export VIPS_CONCURRENCY=1
taskset -c "$CORE" hyperfine -N --style none --warmup "$WARMUP" --runs "$RUNS" \
    --export-json "$OUT/vips.json" \
    -n baseline "vipsthumbnail -s 1024 $OUT/baseline.jpg -o $OUT/vips-baseline.jpg[Q=85]" \
    -n progressive "vipsthumbnail -s 1024 $OUT/progressive.jpg -o $OUT/vips-progressive.jpg[Q=85]" \
    -n startup "vipsthumbnail -s 1024 $OUT/tiny.jpg -o $OUT/vips-tiny.jpg[Q=85]" >/dev/null

log "Pillow and pyvips: in-process on core $CORE"
taskset -c "$CORE" "$PY" - "$OUT" "$RUNS" "$WARMUP" >"$OUT/in-process.json" <<'PYEOF'
import base64, io, json, statistics, sys, time
import PIL
import pyvips
from PIL import Image
out, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def pillow(data):
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (1024, 1024))
    im.thumbnail((1024, 1024), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()), im.size

def vips(data):
    im = pyvips.Image.thumbnail_buffer(data, 1024)
    return base64.b64encode(im.jpegsave_buffer(Q=85)), (im.width, im.height)

result = {"pillow": {"version": PIL.__version__}, "pyvips": {"version": pyvips.__version__}}
for name in ("baseline", "progressive"):
    data = open(f"{out}/{name}.jpg", "rb").read()
    for who, once in (("pillow", pillow), ("pyvips", vips)):
        for _ in range(warmup):
            once(data)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            _, size = once(data)
            times.append(time.perf_counter() - t)
        result[who][name] = {"median": statistics.median(times), "size": size}
print(json.dumps(result))
PYEOF

# ---- 4. memory per image -----------------------------------------------------------------
log "ours: peak memory, a fresh process per file"
: >"$OUT/memory.jsonl"
for name in baseline progressive; do
    (cd "$ROOT" && cargo bench -q --bench image_memory -- "$OUT/$name.jpg" "$OUT/ours-$name.jpg" 2>/dev/null) \
        >>"$OUT/memory.jsonl"
done

# ---- 5. quality -----------------------------------------------------------------------------
# PSNR of each output against a reference made without any shortcut: a full-size decode,
# then Lanczos to the output's own size (Pillow). DCT scaling, fancy upsampling and the final
# JPEG q85 all show up in it; the three pipelines should land close together.
log "quality: PSNR against a full-decode Lanczos reference"
"$PY" - "$OUT" >"$OUT/quality.json" <<'PYEOF'
import io, json, math, sys
from PIL import Image, ImageChops, ImageStat
out = sys.argv[1]

def psnr(a, b):
    mse = sum(v * v for v in ImageStat.Stat(ImageChops.difference(a, b)).rms) / 3
    return 99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)

result = {}
for name in ("baseline", "progressive"):
    full = Image.open(f"{out}/{name}.jpg").convert("RGB")
    pil = Image.open(f"{out}/{name}.jpg")
    pil.draft("RGB", (1024, 1024))
    pil.thumbnail((1024, 1024), Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=85)
    outputs = {
        "ours": Image.open(f"{out}/ours-{name}.jpg"),
        "vips": Image.open(f"{out}/vips-{name}.jpg"),
        "pillow": Image.open(buf),
    }
    result[name] = {}
    for who, img in outputs.items():
        img = img.convert("RGB")
        reference = full.resize(img.size, Image.LANCZOS)
        result[name][who] = {"size": img.size, "psnr": psnr(img, reference)}
print(json.dumps(result))
PYEOF

# ---- 6. twelve photos on two threads -----------------------------------------------------
if [ "$SKIP_PARALLEL" != 1 ]; then
    log "ours: criterion parallel (not pinned, $(nproc) cores)"
    rm -rf "$CRITERION/parallel"
    (cd "$ROOT" && cargo bench -q --bench images -- parallel/ >"$OUT/criterion-parallel.txt" 2>&1) \
        || { cat "$OUT/criterion-parallel.txt"; die "criterion failed"; }
fi

# ---- 7. summary ----------------------------------------------------------------------------
"$PY" - "$OUT" "$CRITERION" "$PHOTO" <<'PYEOF' | tee "$OUT/results.md"
import json, os, sys
out, crit, photo = sys.argv[1:4]

def criterion_median(path):
    p = f"{crit}/{path}/new/estimates.json"
    return json.load(open(p))["median"]["point_estimate"] / 1e9 if os.path.exists(p) else None

def jpeg_kind(path):
    d = open(path, "rb").read()
    i = 2
    while i + 4 <= len(d):
        m = d[i + 1]
        if m in (0xC0, 0xC1):
            return "baseline"
        if m == 0xC2:
            return "progressive"
        i += 2 + int.from_bytes(d[i + 2:i + 4], "big")
    return "?"

ms = lambda s: f"{s * 1000:.1f} ms"
mib = lambda b: f"{b / 2**20:.1f} MiB"
mark = lambda ok: "met" if ok else "**MISSED**"
vips = {r["command"]: r for r in json.load(open(f"{out}/vips.json"))["results"]}
inproc = json.load(open(f"{out}/in-process.json"))
pillow, pyvips = inproc["pillow"], inproc["pyvips"]
startup = vips["startup"]["median"]

print(f"## Image pipeline: 18 MP photo to 1024 long edge, one core\n")
print(f"Photo: `{os.path.basename(photo)}` (5640x3172). Pillow {pillow['version']}, pyvips "
      f"{pyvips['version']}; VIPS_CONCURRENCY=1. Medians.\n")
print("| file | size | ours | vipsthumbnail (process) | vips in-process (pyvips) | Pillow | "
      "ours / fastest | target ≤ 1.3× |")
print("|---|---|---|---|---|---|---|---|")
for name in ("baseline", "progressive"):
    f = f"{out}/{name}.jpg"
    ours = criterion_median(f"prepare_18mp/prepare_base64/{name}")
    v, pv, p = vips[name]["median"], pyvips[name]["median"], pillow[name]["median"]
    ratio = ours / min(v, pv, p)
    print(f"| {name} ({jpeg_kind(f)}) | {mib(os.path.getsize(f))} | {ms(ours)} | {ms(v)} | "
          f"{ms(pv)} | {ms(p)} | {ratio:.2f} | {mark(ratio <= 1.3)} |")
print(f"\nvipsthumbnail on a 64x64 JPEG (mostly process start-up): {ms(startup)}.")
full = [criterion_median(f"prepare_18mp/full_decode/{n}") for n in ("baseline", "progressive")]
if all(full):
    print(f"Reference in the same run, a full-size libjpeg-turbo decode alone: baseline "
          f"{ms(full[0])}, progressive {ms(full[1])}.")

quality = json.load(open(f"{out}/quality.json"))
print("\n### Quality: PSNR against a full-size decode + Lanczos reference (higher is closer)\n")
print("| file | ours | vips | Pillow |")
print("|---|---|---|---|")
for name in ("baseline", "progressive"):
    q = quality[name]
    cell = lambda who: f"{q[who]['psnr']:.2f} dB ({q[who]['size'][0]}x{q[who]['size'][1]})"
    print(f"| {name} | {cell('ours')} | {cell('vips')} | {cell('pillow')} |")
print("\nvips and Pillow decode this photo at DCT scale 1/2 and leave the rest to their filter; "
      "ours takes the smallest M/8 scale that still reaches the target (1/4 here), which keeps "
      "memory under 2× the file. The JPEG q85 itself costs about 33 dB in every pipeline.")

print("\n### Peak memory added by one prepare() + base64 (fresh process per file)\n")
print("| file | size | Rust heap peak | RSS peak (VmHWM − VmRSS before) | RSS / file | target ≤ 2× (baseline) |")
print("|---|---|---|---|---|---|")
for line in open(f"{out}/memory.jsonl"):
    m = json.loads(line)
    name = os.path.basename(m["file"]).removesuffix(".jpg")
    ratio = m["rss_peak"] / m["file_bytes"]
    verdict = mark(ratio <= 2.0) if name == "baseline" else "(no target)"
    print(f"| {name} | {mib(m['file_bytes'])} | {mib(m['heap_peak'])} | {mib(m['rss_peak'])} | "
          f"{ratio:.2f}× | {verdict} |")

one = criterion_median("parallel/one_photo")
serial = criterion_median("parallel/twelve_photos_one_thread")
twelve = criterion_median("parallel/twelve_photos_two_threads")
if one and serial and twelve:
    r = twelve / one
    print(f"\n### Twelve baseline photos on two threads\n")
    print(f"One photo {ms(one)}; twelve on one thread {ms(serial)} ({serial / one:.2f}×); "
          f"twelve on two threads {ms(twelve)}: **{r:.2f}× one photo** (target ≤ 7×: "
          f"{mark(r <= 7)}), a speed-up of {serial / twelve:.2f} from the second thread.")
    ref1 = criterion_median("parallel/cpu_reference_one_thread")
    ref2 = criterion_median("parallel/cpu_reference_two_threads")
    if ref1 and ref2:
        print(f"Reference, pure integer work in the same run: {ms(ref1)} on one thread, "
              f"{ms(ref2)} on two, a speed-up of {ref1 / ref2:.2f}: what this machine's two "
              f"cores give at all (the 7× target needs 1.71).")
print(f"\nCPU already busy just before the timings: {open(f'{out}/busy.txt').read().strip()}% "
      "of both cores (anything but about 0 skews every figure above).")
PYEOF
