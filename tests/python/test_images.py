"""Images through the gateway, as the OpenAI SDK sends them: counting, inlining remote URLs,
downscaling, formats, hostile files, the fetcher's limits, parallel fetches, the cache and
/gateway/inspect. The upstream is the recording stand-in, so each test reads exactly what the
upstream received; remote images come from a loopback image host (tests/python/image_host.py)
that the gateway is allowed to reach through `images.allow_hosts`."""

from __future__ import annotations

import threading
import time

import httpx2
import openai
import pytest
from PIL import Image

from image_host import ImageHost
from images import (
    PHOTO_2560x1920,
    PHOTO_3840x2160,
    data_uri,
    decode_data_uri,
    encode,
    gradient,
    image_part,
    jpeg,
    opened,
    png,
    png_bomb,
    sent_urls,
    user,
)
from support import MODEL, make_client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def image_host():
    host = ImageHost().start()
    yield host
    host.close()


def _gateway(start_gateway, recording_upstream, image_host, **images):
    images.setdefault("allow_hosts", [f"127.0.0.1:{image_host.port}"])
    return start_gateway(
        upstreams=[{"name": "recording", "base_url": recording_upstream.base_url}],
        models=[
            {"id": MODEL, "upstream": "recording", "context_window": 128000},
            {"id": "two-images", "upstream": "recording", "max_images": 2},
            {"id": "tiny-ctx", "upstream": "recording", "context_window": 2000},
            {"id": "small-edge", "upstream": "recording", "max_image_edge": 256},
        ],
        images=images,
    )


@pytest.fixture
def gw(start_gateway, recording_upstream, image_host):
    return _gateway(start_gateway, recording_upstream, image_host)


@pytest.fixture
def client(gw):
    c = make_client(gw.base_url)
    yield c
    c.close()


def upstream_images(recording_upstream) -> list[tuple[str, bytes]]:
    assert recording_upstream.requests, "the upstream received nothing"
    return [decode_data_uri(u) for u in sent_urls(recording_upstream.requests[-1].body)]


def msg(e: openai.APIStatusError) -> str:
    """The gateway's own error message (the SDK prefixes `message` with the status)."""
    return e.body["message"]


def bad_request(client, model=MODEL, **kw) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, **kw)
    return info.value


# --- inlining and downscaling ---------------------------------------------------------------


def test_a_remote_photo_is_fetched_downscaled_to_1024_and_sent_inline(client, image_host, recording_upstream):
    url = image_host.add("/wood.jpg", body=PHOTO_2560x1920.read_bytes())
    client.chat.completions.create(model=MODEL, messages=user(image_part(url, detail="high")))
    [(mime, data)] = upstream_images(recording_upstream)
    im = opened(data)
    assert (mime, im.format, im.size) == ("image/jpeg", "JPEG", (1024, 768))
    # Every other field of the part is kept.
    part = recording_upstream.requests[-1].json()["messages"][0]["content"][1]
    assert part["image_url"]["detail"] == "high"
    assert image_host.count("/wood.jpg") == 1


def test_a_progressive_16_9_photo_keeps_its_aspect(client, image_host, recording_upstream):
    url = image_host.add("/elephants.jpg", body=PHOTO_3840x2160.read_bytes())
    client.chat.completions.create(model=MODEL, messages=user(image_part(url)))
    [(_, data)] = upstream_images(recording_upstream)
    assert opened(data).size == (1024, 576)


def test_a_small_remote_image_is_inlined_byte_for_byte_not_upscaled(client, image_host, recording_upstream):
    small = png(300, 200)
    url = image_host.add("/small.png", body=small, content_type="application/octet-stream")
    client.chat.completions.create(model=MODEL, messages=user(image_part(url)))
    [(mime, data)] = upstream_images(recording_upstream)
    assert (mime, data) == ("image/png", small)


def test_a_small_base64_image_goes_upstream_exactly_as_sent(client, recording_upstream):
    uri = data_uri(jpeg(640, 480))
    client.chat.completions.create(model=MODEL, messages=user(image_part(uri)))
    assert sent_urls(recording_upstream.requests[-1].body) == [uri]
    assert uri.encode() in recording_upstream.requests[-1].body


def test_a_large_base64_image_is_downscaled_per_model(client, recording_upstream):
    uri = data_uri(jpeg(2000, 1000))
    client.chat.completions.create(model="small-edge", messages=user(image_part(uri)))
    [(_, data)] = upstream_images(recording_upstream)
    assert opened(data).size == (256, 128)


@pytest.mark.parametrize(
    "name,make,mime,size",
    [
        ("cmyk-jpeg", lambda: encode(gradient(1600, 1200, "CMYK"), "JPEG"), "image/jpeg", (1024, 768)),
        ("grey-jpeg", lambda: encode(gradient(1600, 1200, "L"), "JPEG"), "image/jpeg", (1024, 768)),
        ("16-bit-png", lambda: encode(gradient(1600, 1200, "L").convert("I;16"), "PNG"), "image/jpeg", (1024, 768)),
        ("palette-png", lambda: encode(gradient(1600, 1200).convert("P"), "PNG"), "image/jpeg", (1024, 768)),
        ("grey-alpha-png", lambda: encode(gradient(1600, 1200, "LA"), "PNG"), "image/jpeg", (1024, 768)),
        ("webp", lambda: encode(gradient(1600, 1200), "WEBP"), "image/jpeg", (1024, 768)),
        ("gif", lambda: encode(gradient(1600, 1200).convert("P"), "GIF"), "image/jpeg", (1024, 768)),
    ],
)
def test_unusual_formats_are_downscaled_to_jpeg(client, recording_upstream, name, make, mime, size):
    client.chat.completions.create(model=MODEL, messages=user(image_part(data_uri(make(), "image/png"))))
    [(got_mime, data)] = upstream_images(recording_upstream)
    im = opened(data)
    assert (got_mime, im.size) == (mime, size), name
    assert im.format == "JPEG"


def test_real_transparency_is_kept_as_png(client, recording_upstream):
    im = gradient(1600, 1200, "RGBA")
    im.putalpha(gradient(1600, 1200, "L"))  # a real alpha ramp
    client.chat.completions.create(model=MODEL, messages=user(image_part(data_uri(encode(im, "PNG"), "image/png"))))
    [(mime, data)] = upstream_images(recording_upstream)
    out = opened(data)
    assert (mime, out.format, out.size) == ("image/png", "PNG", (1024, 768))
    assert out.mode in ("RGBA", "LA") and out.getextrema()[-1][0] < 255


def test_an_animated_gif_sends_its_first_frame(client, recording_upstream):
    red = Image.new("RGB", (200, 100), (255, 0, 0))
    blue = Image.new("RGB", (200, 100), (0, 0, 255))
    gif = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    client.chat.completions.create(model=MODEL, messages=user(image_part(data_uri(gif, "image/gif"))))
    [(_, data)] = upstream_images(recording_upstream)
    out = opened(data).convert("RGB")
    assert out.size == (200, 100)
    assert getattr(opened(data), "n_frames", 1) == 1
    r, g, b = out.getpixel((100, 50))
    assert r > 200 and b < 60, (r, g, b)


def test_exif_orientation_is_applied(client, recording_upstream):
    im = gradient(2000, 1000)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(im, "JPEG", exif=exif.tobytes())
    client.chat.completions.create(model=MODEL, messages=user(image_part(data_uri(data))))
    [(_, out)] = upstream_images(recording_upstream)
    assert opened(out).size == (512, 1024)


# --- counting ---------------------------------------------------------------------------------


def test_twelve_images_pass_and_thirteen_are_refused_before_any_fetch(client, image_host, recording_upstream):
    small = png(32, 32)
    urls = [image_host.add(f"/i{i}.png", body=small, content_type="image/png") for i in range(13)]
    client.chat.completions.create(model=MODEL, messages=user(*[image_part(u) for u in urls[:12]]))
    assert len(upstream_images(recording_upstream)) == 12
    fetched = image_host.count()
    assert fetched == 12
    e = bad_request(client, messages=user(*[image_part(u) for u in urls]))
    assert e.code == "too_many_images" and e.param == "messages"
    assert msg(e) == f"messages contain 13 images; {MODEL} accepts at most 12"
    assert image_host.count() == fetched, "nothing may be fetched for a refused request"
    assert len(recording_upstream.requests) == 1


def test_images_are_counted_across_messages(client, recording_upstream):
    uri = data_uri(png(8, 8), "image/png")
    messages = [
        {"role": "user", "content": [image_part(uri) for _ in range(7)]},
        {"role": "assistant", "content": "I see seven."},
        {"role": "user", "content": [{"type": "text", "text": "and these?"}, *[image_part(uri) for _ in range(6)]]},
    ]
    e = bad_request(client, messages=messages)
    assert e.code == "too_many_images" and "13 images" in msg(e)
    assert not recording_upstream.requests


def test_limits_are_per_model(client, recording_upstream):
    uri = data_uri(png(8, 8), "image/png")
    e = bad_request(client, model="two-images", messages=user(*[image_part(uri)] * 3))
    assert msg(e) == "messages contain 3 images; two-images accepts at most 2"
    client.chat.completions.create(model=MODEL, messages=user(*[image_part(uri)] * 3))
    assert len(upstream_images(recording_upstream)) == 3


# --- the context budget -----------------------------------------------------------------------


def test_the_context_budget_accepts_the_boundary_and_refuses_one_more(gw, client, recording_upstream):
    messages = user(image_part(data_uri(png(256, 256), "image/png")), text="Describe it.")
    report = httpx2.post(f"{gw.url}/gateway/inspect", json={"model": "tiny-ctx", "messages": messages}).json()
    assert report["images"][0]["tokens"] == 272
    prompt = report["tokens"]["text"] + report["tokens"]["images"]
    fits = 2000 - prompt
    client.chat.completions.create(model="tiny-ctx", messages=messages, max_tokens=fits)
    assert len(recording_upstream.requests) == 1
    e = bad_request(client, model="tiny-ctx", messages=messages, max_completion_tokens=fits + 1)
    assert e.code == "context_length_exceeded" and e.param == "messages"
    text = report["tokens"]["text"]
    assert msg(e) == (
        f"the request needs 2,001 tokens: text {text:,}, 1 image 272, max_tokens {fits + 1:,}; tiny-ctx holds 2,000"
    )
    assert len(recording_upstream.requests) == 1


def test_image_tokens_count_the_size_actually_sent(gw):
    big = data_uri(jpeg(4096, 4096))
    report = httpx2.post(
        f"{gw.url}/gateway/inspect", json={"model": MODEL, "messages": user(image_part(big))}
    ).json()
    [img] = report["images"]
    assert img["sent"]["width"] == 1024 and img["sent"]["height"] == 1024
    assert img["tokens"] == 4160
    assert img["action"] == "downscaled" and img["source"] == "data_uri"
    assert img["original"] == {"format": "jpeg", "width": 4096, "height": 4096, "bytes": img["original"]["bytes"]}
    assert report["accepted"] is True and report["tokens"]["context_window"] == 128000


# --- hostile files and fetch failures ---------------------------------------------------------


@pytest.mark.parametrize(
    "name,uri,code",
    [
        ("bad base64", "data:image/png;base64,iVBORw0KGgo!", "invalid_image_url"),
        ("text as jpeg", data_uri(b"this is not an image at all"), "invalid_image"),
        ("truncated jpeg", data_uri(jpeg(1600, 1200)[:3000]), "invalid_image"),
        ("png bomb", data_uri(png_bomb(), "image/png"), "invalid_image"),
        ("ftp url", "ftp://example.com/x.png", "invalid_image_url"),
        ("userinfo", "http://user:pw@example.com/x.png", "invalid_image_url"),
    ],
)
def test_hostile_inline_images_are_400(client, recording_upstream, name, uri, code):
    e = bad_request(client, messages=user(image_part(data_uri(png(8, 8), "image/png")), image_part(uri)))
    assert e.code == code, f"{name}: {msg(e)}"
    assert msg(e).startswith("image 2 (messages[0].content[2]): "), msg(e)
    assert not recording_upstream.requests


def test_the_bomb_is_refused_from_its_header(client):
    e = bad_request(client, messages=user(image_part(data_uri(png_bomb(), "image/png"))))
    assert "30000x30000" in msg(e) and "max_pixels" in msg(e)


@pytest.mark.parametrize(
    "name,route",
    [
        ("404", dict(body=b"nope", status=404, content_type="text/plain")),
        ("html", dict(body=b"<!doctype html><html><body>hello</body></html>", content_type="image/jpeg")),
        ("html that stalls", dict(body=b"<html>" + b" " * 100, content_type="image/png", stall_after_body=True)),
        ("endless", dict(endless=True)),
        ("lying length", dict(body=b"\xff\xd8\xff" + b"\0" * 100, lie_length=50_000_000)),
    ],
)
def test_bad_remote_images_are_400_invalid_image_url(client, image_host, recording_upstream, name, route):
    url = image_host.add("/bad", **route)
    e = bad_request(client, messages=user(image_part(url)))
    assert e.code == "invalid_image_url", f"{name}: {msg(e)}"
    assert msg(e).startswith("image 1 (messages[0].content[1]): ")
    assert "127.0.0.1" not in msg(e)
    assert not recording_upstream.requests


def test_fetch_timeout(start_gateway, recording_upstream, image_host):
    g = _gateway(start_gateway, recording_upstream, image_host, fetch_timeout_ms=300)
    c = make_client(g.base_url)
    release = threading.Event()
    try:
        slow = image_host.add("/slow.png", body=png(8, 8), hold=release)
        e = bad_request(c, messages=user(image_part(slow)))
        assert e.code == "invalid_image_url" and "300 ms" in msg(e), msg(e)
    finally:
        release.set()
        c.close()


def test_fetch_byte_cap(start_gateway, recording_upstream, image_host):
    g = _gateway(start_gateway, recording_upstream, image_host, max_fetch_bytes=100_000)
    c = make_client(g.base_url)
    try:
        big = image_host.add("/big.jpg", body=PHOTO_2560x1920.read_bytes())
        e = bad_request(c, messages=user(image_part(big)))
        assert e.code == "invalid_image_url" and "100000 bytes" in msg(e), msg(e)
        chunked = image_host.add("/chunked", endless=True)
        e = bad_request(c, messages=user(image_part(chunked)))
        assert e.code == "invalid_image_url" and "100000 bytes" in msg(e), msg(e)
    finally:
        c.close()


def test_media_urls_the_upstream_would_fetch_are_refused(client, recording_upstream):
    for kind in ("video_url", "audio_url"):
        e = bad_request(client, messages=[{"role": "user", "content": [{"type": kind, kind: {"url": "http://169.254.169.254/"}}]}])
        assert e.code == "invalid_request" and e.param == "messages", msg(e)
    # `input_image` parts are images: counted and inlined like image_url parts.
    e = bad_request(
        client,
        model="two-images",
        messages=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://169.254.169.254/"}] * 3}],
    )
    assert e.code == "too_many_images"
    assert not recording_upstream.requests


# --- the fetcher cannot be turned against its host --------------------------------------------


def test_private_addresses_are_refused_in_every_spelling_without_a_connection(
    start_gateway, recording_upstream, image_host
):
    # No allow_hosts: the loopback image host is private, so every spelling must be refused.
    g = _gateway(start_gateway, recording_upstream, image_host, allow_hosts=[])
    c = make_client(g.base_url)
    image_host.add("/x.png", body=png(8, 8))
    p = image_host.port
    spellings = [
        f"http://127.0.0.1:{p}/x.png",
        f"http://2130706433:{p}/x.png",
        f"http://0x7f.1:{p}/x.png",
        f"http://127.1:{p}/x.png",
        f"http://0177.0.0.1:{p}/x.png",
        f"http://[::ffff:127.0.0.1]:{p}/x.png",
        f"http://[::ffff:7f00:1]:{p}/x.png",
        f"http://[::1]:{p}/x.png",
        f"http://localhost:{p}/x.png",
        f"http://LOCALHOST.:{p}/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00::1]/x.png",
        "http://10.1.2.3/x.png",
        "http://192.168.1.1/x.png",
        "http://100.64.0.1/x.png",
        "http://0.0.0.0/x.png",
        "http://[64:ff9b::a9fe:a9fe]/x.png",
        "http://[2002:7f00:1::]/x.png",
    ]
    try:
        for url in spellings:
            e = bad_request(c, messages=user(image_part(url)))
            assert e.code == "invalid_image_url", f"{url}: {msg(e)}"
            assert "127.0.0.1" not in msg(e) and "169.254" not in msg(e).split(": ", 1)[1], msg(e)
    finally:
        c.close()
    assert image_host.count() == 0, "a refused address must never be connected to"
    assert not recording_upstream.requests


def test_redirects_are_vetted_at_every_hop(client, image_host, recording_upstream):
    small = png(16, 16)
    image_host.add("/final.png", body=small, content_type="image/png")
    hop = image_host.add("/hop", status=302, location="/final.png")
    client.chat.completions.create(model=MODEL, messages=user(image_part(hop)))
    assert upstream_images(recording_upstream) == [("image/png", small)]
    # Into private space: the allowed host redirects to an address that is not allowed.
    for target in ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:9/x.png", "http://10.0.0.1/x.png"]:
        url = image_host.add("/evil", status=307, location=target)
        e = bad_request(client, messages=user(image_part(url)))
        assert e.code == "invalid_image_url", f"{target}: {msg(e)}"
    # Too many hops (max_redirects = 3).
    for i in range(4):
        image_host.add(f"/r{i}", status=301, location=f"/r{i + 1}")
    image_host.add("/r4", body=small, content_type="image/png")
    e = bad_request(client, messages=user(image_part(image_host.url("/r0"))))
    assert e.code == "invalid_image_url" and "redirect" in msg(e)
    # Exactly max_redirects hops (r1 -> r2 -> r3 -> r4) is allowed.
    client.chat.completions.create(model=MODEL, messages=user(image_part(image_host.url("/r1"))))
    assert upstream_images(recording_upstream) == [("image/png", small)]


# --- parallel fetching and the cache ----------------------------------------------------------


def test_the_images_of_one_request_are_fetched_in_parallel(client, image_host, recording_upstream):
    # Each response is held until all twelve requests are in flight at once: a gateway that
    # fetched one by one would break the barrier (the host then answers 500 and the test fails).
    barrier = threading.Barrier(12)
    urls = [
        image_host.add(f"/p{i}.jpg", body=jpeg(1600, 1200), barrier=barrier) for i in range(12)
    ]
    client.chat.completions.create(model=MODEL, messages=user(*[image_part(u) for u in urls]))
    assert [opened(d).size for _, d in upstream_images(recording_upstream)] == [(1024, 768)] * 12


def test_a_conversation_fetches_and_resizes_each_image_once(gw, client, image_host, recording_upstream):
    url = image_host.add("/photo.jpg", body=PHOTO_2560x1920.read_bytes())
    big_inline = data_uri(jpeg(2400, 1800))
    history = []
    for turn in range(3):
        history += user(image_part(url), image_part(big_inline), text=f"turn {turn}")
        reply = client.chat.completions.create(model=MODEL, messages=history)
        history.append({"role": "assistant", "content": reply.choices[0].message.content})
    assert image_host.count("/photo.jpg") == 1
    # Third turn: every image (2 per turn, 6 in all) answered from the cache.
    report = httpx2.post(f"{gw.url}/gateway/inspect", json={"model": MODEL, "messages": history}).json()
    assert [i["cached"] for i in report["images"]] == [True] * 6
    assert image_host.count("/photo.jpg") == 1
    sizes = {opened(d).size for _, d in upstream_images(recording_upstream)}
    assert sizes == {(1024, 768)}


def test_concurrent_requests_for_one_image_share_one_fetch(gw, image_host, recording_upstream):
    release = threading.Event()
    url = image_host.add("/shared.jpg", body=jpeg(1600, 1200), hold=release)
    errors: list[BaseException] = []

    def ask() -> None:
        c = make_client(gw.base_url)
        try:
            c.chat.completions.create(model=MODEL, messages=user(image_part(url)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    # Release the one fetch only once all four requests are inside the gateway (the in-flight
    # gauge counts them, plus the scrape itself).
    wait_until(lambda: in_flight(gw) >= 5, "four requests in flight")
    release.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert image_host.count("/shared.jpg") == 1
    assert len(recording_upstream.requests) == 4


def in_flight(gw) -> int:
    text = httpx2.get(f"{gw.url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("vision_gateway_requests_in_flight "))
    return int(float(line.split()[1]))


def wait_until(cond, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # a poll of an observable condition, not a synchronisation by time


# --- /gateway/inspect -------------------------------------------------------------------------


def test_inspect_reports_without_calling_the_upstream(gw, image_host, recording_upstream):
    url = image_host.add("/wood.jpg", body=PHOTO_2560x1920.read_bytes())
    small = png(100, 50)
    body = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": user(image_part(url), image_part(data_uri(small, "image/png"))),
    }
    r = httpx2.post(f"{gw.url}/gateway/inspect", json=body)
    assert r.status_code == 200
    report = r.json()
    assert report["accepted"] is True and report["error"] is None
    first, second = report["images"]
    assert first["source"] == "url" and first["action"] == "downscaled"
    assert first["original"]["width"] == 2560 and first["sent"]["width"] == 1024
    assert first["tokens"] == 48 * 65
    assert second == {
        "index": 2,
        "at": "messages[0].content[2]",
        "source": "data_uri",
        "original": {"format": "png", "width": 100, "height": 50, "bytes": len(small)},
        "sent": {"format": "png", "width": 100, "height": 50, "bytes": len(small)},
        "tokens": 4 * 8,
        "action": "unchanged",
        "cached": False,
        "error": None,
    }
    t = report["tokens"]
    assert report["images"][0]["index"] == 1
    assert t["total"] == t["text"] + 48 * 65 + 32 + 100 and t["max_tokens"] == 100
    assert not recording_upstream.requests

    # Refusals are verdicts, with the error the chat route would give.
    many = {"model": "two-images", "messages": user(*[image_part(data_uri(small, "image/png"))] * 3)}
    report = httpx2.post(f"{gw.url}/gateway/inspect", json=many).json()
    assert report["accepted"] is False and report["error"]["code"] == "too_many_images"
    bad = {"model": MODEL, "messages": user(image_part("data:image/png;base64,@@@"))}
    report = httpx2.post(f"{gw.url}/gateway/inspect", json=bad).json()
    assert report["accepted"] is False and report["images"][0]["error"]["code"] == "invalid_image_url"
    assert not recording_upstream.requests


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_bombs_and_endless_bodies_leave_memory_bounded(gw, client, image_host):
    # Each of these would need gigabytes if read or decoded whole: a 30000x30000 PNG, a body
    # that never ends, a body that claims 50 MB. All must be refused, the process staying small.
    bomb = data_uri(png_bomb(), "image/png")
    endless = image_host.add("/endless", endless=True)
    liar = image_host.add("/liar", body=b"\xff\xd8\xff" + b"\0" * 100, lie_length=50_000_000)
    for _ in range(3):
        for url in (bomb, endless, liar):
            e = bad_request(client, messages=user(image_part(url)))
            assert e.code in ("invalid_image", "invalid_image_url"), msg(e)
    peak = peak_rss_mb(gw.proc.pid)
    assert peak < 200, f"the gateway's peak RSS grew to {peak:.0f} MB"


def test_image_outcomes_are_in_the_metrics_and_the_access_log(gw, client, image_host):
    small = data_uri(png(8, 8), "image/png")
    client.chat.completions.create(model=MODEL, messages=user(image_part(small), image_part(data_uri(jpeg(2000, 1500)))))
    e = bad_request(client, messages=user(image_part("http://10.0.0.1/x.png")))
    assert e.code == "invalid_image_url"
    metrics = httpx2.get(f"{gw.url}/metrics").text
    assert 'vision_gateway_images_total{outcome="unchanged"} 1' in metrics, metrics
    assert 'vision_gateway_images_total{outcome="processed"} 1' in metrics
    assert 'vision_gateway_image_refusals_total{code="invalid_image_url"} 1' in metrics
    line = gw.wait_for_event(lambda ev: ev.get("images") == 2, timeout=5)
    assert line is not None and line["images_processed"] == 1 and line["prompt_tokens"] > 0, line
