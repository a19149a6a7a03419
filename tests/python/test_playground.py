"""The browser playground (`GET /playground`), driven in Debian's real headless Chromium
(/usr/bin/chromium, installed by scripts/install-deps.sh) through Playwright; Playwright's own
browser download is never used.

The gateway is the real binary; the upstream is the recording stand-in, so each test reads
exactly what the upstream received. Its answers stream in pieces, and a test can hold a stream
after its first piece (`Answers.hold`) to see the page show a partial answer, or stop it.
Screenshots go to target/test-output/ for a person to look at.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from images import PHOTO_2560x1920, decode_data_uri, jpeg, opened, sent_urls
from recording_upstream import RecordedRequest, Reply, chat_completion_body, chunked_response, full_response, sse_chunk
from support import MODEL, REPO, sha256_hex

pytestmark = pytest.mark.timeout(90)

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium tries to reach Google's services, and on a
# closed network its connections are refused; none of this is needed to show a local page.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = REPO / "target" / "test-output"
ANSWER = ["The photo ", "shows ", "a wooden ", "surface."]

expect.set_options(timeout=15_000)


class Answers:
    """The recording upstream's handler: a streamed (or whole) answer per request, by model.

    `hold()` makes the next streamed answer stop after its first piece until the returned
    event is set; `cut-model` answers one piece and then cuts the connection."""

    def __init__(self) -> None:
        self._held: list[threading.Event] = []
        self._lock = threading.Lock()

    def hold(self) -> threading.Event:
        gate = threading.Event()
        with self._lock:
            self._held.append(gate)
        return gate

    def __call__(self, req: RecordedRequest) -> Reply:
        body = req.json()
        model = body.get("model", "unknown")
        if not body.get("stream"):
            return full_response(chat_completion_body("".join(ANSWER), model))
        if model == "cut-model":
            reply = chunked_response([sse_chunk("A partial ", model=model)])
            reply.cut_after = True
            return reply
        with self._lock:
            gate = self._held.pop(0) if self._held else None
        pieces = [sse_chunk(p, model=model) for p in ANSWER] + [sse_chunk(None, "stop", model=model), b"data: [DONE]\n\n"]

        def paced():
            # Reply.pieces is iterated lazily, so a held answer waits here, after its first piece.
            yield pieces[0]
            if gate is not None:
                gate.wait(30)
            yield from pieces[1:]

        reply = chunked_response([])
        reply.pieces = paced()  # type: ignore[assignment]
        # A short pause between pieces, during which the stand-in notices a closed connection.
        reply.interval = 0.01
        return reply


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-deps.sh test (Debian's chromium)", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def answers(recording_upstream) -> Answers:
    a = Answers()
    recording_upstream.handler = a
    return a


@pytest.fixture
def gw(start_gateway, recording_upstream, answers, closed_port):
    return start_gateway(
        upstreams=[
            {"name": "recording", "base_url": recording_upstream.base_url},
            {"name": "offline", "base_url": f"http://127.0.0.1:{closed_port}/v1", "connect_timeout_ms": 2000},
        ],
        models=[
            {"id": MODEL, "upstream": "recording", "context_window": 128000},
            {"id": "tiny-ctx", "upstream": "recording", "context_window": 2000},
            {"id": "cut-model", "upstream": "recording"},
            {"id": "offline-model", "upstream": "offline"},
        ],
    )


@pytest.fixture
def page(browser, gw):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(f"{gw.url}/playground")
    # Ready: models listed, and the first inspection (which also gives max_images) answered.
    expect(pg.locator("#model")).to_have_value(MODEL)
    expect(pg.locator("#verdict")).to_contain_text("would accept")
    yield pg
    context.close()
    # A refused request logs a console error for its response status; anything else is a bug.
    unexpected = [e for e in errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected


_capture = None


@pytest.fixture(autouse=True)
def _capture_manager(pytestconfig):
    # Screenshot paths go to the terminal even while output is captured (-q runs).
    global _capture
    _capture = pytestconfig.pluginmanager.get_plugin("capturemanager")


def screenshot(pg: Page, name: str, full_page: bool = True) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    pg.screenshot(path=str(path), full_page=full_page)
    if _capture is not None:
        with _capture.global_and_fixture_disabled():
            print(f"\nscreenshot: {path}", flush=True)
    return path


def upstream_bodies(recording_upstream) -> list[dict]:
    return [r.json() for r in recording_upstream.requests if r.target.endswith("/chat/completions")]


def test_a_photo_streams_in_and_the_code_reproduces_the_request(page: Page, gw, recording_upstream, answers, tmp_path):
    page.set_input_files("#files", str(PHOTO_2560x1920))
    # The budget preview: the 2560x1920 photo goes upstream as 1024x768, 48 rows of 64+1 tokens.
    budget = page.locator("#budget-body")
    expect(budget).to_contain_text("Wood.jpg (JPEG 2560×1920")
    expect(budget).to_contain_text("JPEG 1024×768")
    expect(budget).to_contain_text("3,120")
    expect(budget).to_contain_text("of 128,000")
    expect(page.locator("#verdict")).to_contain_text("would accept")
    expect(page.locator("#thumbs li")).to_have_count(1)

    page.fill("#system", "Answer in one sentence.")
    page.fill("#temperature", "0.2")
    page.fill("#max_tokens", "300")
    expect(budget).to_contain_text("max_tokens 300")

    gate = answers.hold()
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("#send")
    # Token by token: the first piece is on the page while the upstream still holds the rest.
    expect(page.locator("#answer")).to_have_text("The photo ")
    expect(page.locator("#stop-stream")).to_be_enabled()
    expect(page.locator("#send")).to_be_disabled()
    gate.set()
    expect(page.locator("#answer")).to_have_text("".join(ANSWER))
    expect(page.locator("#answer-status")).to_have_text("Done.")
    expect(page.locator("#usage")).to_contain_text("finish_reason: stop")
    expect(page.locator("#send")).to_be_enabled()

    page_body = sent.value.post_data_json
    assert page_body["stream"] is True
    [page_url] = sent_urls(json.dumps(page_body).encode())
    assert decode_data_uri(page_url) == ("image/jpeg", PHOTO_2560x1920.read_bytes()), "the page sends the file as is"

    [received] = upstream_bodies(recording_upstream)
    urls = sent_urls(json.dumps(received).encode())
    assert len(urls) == 1 and urls[0].startswith("data:image/"), urls[:1]
    mime, data = decode_data_uri(urls[0])
    assert mime == "image/jpeg" and opened(data).size == (1024, 768)
    assert received["messages"][0] == {"role": "system", "content": "Answer in one sentence."}
    assert received["messages"][1]["content"][0] == {"type": "text", "text": "What is in this image?"}
    assert (received["temperature"], received["max_tokens"]) == (0.2, 300)
    assert "top_p" not in received and "stop" not in received, "unset parameters are not sent"
    screenshot(page, "playground.png")

    # View code: Python first.
    page.click("#view-code")
    code = page.locator("#code")
    expect(code).to_contain_text("chat.completions.create")
    python = code.inner_text()
    assert f'base_url="{gw.url}/v1"' in python
    assert 'data_uri("Wood.jpg", "image/jpeg")' in python
    assert "temperature=0.2" in python and "max_tokens=300" in python and "stream=True" in python
    assert len(python) < 3000, "no inline base64"
    page.set_viewport_size({"width": 1280, "height": 1000})
    screenshot(page, "playground-code.png", full_page=False)

    # The copy button puts exactly the shown code on the clipboard.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("#copy")
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == python

    # Keyboard: arrow keys move between the language tabs.
    page.focus("#tab-python")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-curl")).to_have_attribute("aria-selected", "true")
    expect(code).to_contain_text("--data-binary @request.json")
    curl = code.inner_text()
    page.click("#tab-js")
    expect(code).to_contain_text("chat.completions.create")
    js = code.inner_text()
    assert 'dataUri("Wood.jpg", "image/jpeg")' in js and len(js) < 3000

    # Each snippet, run, sends the upstream the very request the page sent.
    shutil.copy(PHOTO_2560x1920, tmp_path / "Wood.jpg")
    (tmp_path / "snippet.py").write_text(python)
    out = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "".join(ANSWER)
    (tmp_path / "snippet.sh").write_text(curl)
    out = subprocess.run(["bash", "-euo", "pipefail", "snippet.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "data: [DONE]" in out.stdout
    first, from_python, from_curl = upstream_bodies(recording_upstream)
    assert from_python == first
    assert from_curl == first
    if shutil.which("node"):
        (tmp_path / "snippet.mjs").write_text(js)
        out = subprocess.run(["node", "--check", "snippet.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr

    # Escape closes the dialog.
    page.keyboard.press("Escape")
    expect(page.locator("#code-dialog")).not_to_be_visible()


def test_a_thirteenth_image_is_refused_before_sending(page: Page, recording_upstream, tmp_path):
    files = []
    for i in range(1, 14):
        f = tmp_path / f"img{i:02}.jpg"
        f.write_bytes(jpeg(64 + i, 48))
        files.append(str(f))
    page.set_input_files("#files", files)
    note = page.locator("#image-note")
    expect(note).to_contain_text(f"{MODEL} accepts at most 12 images a request")
    expect(note).to_contain_text("img13.jpg")
    expect(page.locator("#thumbs li")).to_have_count(12)
    expect(page.locator("#image-count")).to_have_text("(12 of at most 12)")
    expect(page.locator("#budget-body tbody tr")).to_have_count(12)
    expect(page.locator("#verdict")).to_contain_text("would accept")
    # A URL is refused the same way.
    page.fill("#image-url", "https://images.example/13.jpg")
    page.click("#add-url")
    expect(note).to_contain_text("the URL was not added")
    expect(page.locator("#thumbs li")).to_have_count(12)
    screenshot(page, "playground-12-images.png")
    # Removing one (from the keyboard) makes room again.
    page.focus('[aria-label="Remove image 3, img03.jpg"]')
    page.keyboard.press("Enter")
    expect(page.locator("#thumbs li")).to_have_count(11)
    expect(page.locator("#thumbs")).not_to_contain_text("img03.jpg")
    page.set_input_files("#files", files[12])
    expect(page.locator("#thumbs li")).to_have_count(12)
    expect(page.locator("#thumbs li").last).to_contain_text("img13.jpg")
    assert not upstream_bodies(recording_upstream), "nothing was sent upstream"


def test_images_can_be_dropped_pasted_and_given_by_url(page: Page, tmp_path):
    small = base64.b64encode(jpeg(80, 60)).decode()
    # A DataTransfer holding a real JPEG file, as a drag from the desktop or a copied image gives.
    make = """([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
        return dt;
    }"""
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": page.evaluate_handle(make, [small, "dropped.jpg"])})
    expect(page.locator("#thumbs li").first).to_contain_text("dropped.jpg")
    clip = page.evaluate_handle(make, [small, "image.png"])
    page.evaluate("(dt) => document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt }))", clip)
    expect(page.locator("#thumbs li").nth(1)).to_contain_text("pasted-image-1.jpeg")
    # A URL is sent as is; the gateway would fetch it (here it may not: the host is not allowed).
    page.fill("#image-url", "ftp://example.org/a.jpg")
    page.keyboard.press("Enter")
    expect(page.locator("#image-note")).to_contain_text("Enter an http or https address")
    page.fill("#image-url", "http://127.0.0.1:9/photo.jpg")
    page.keyboard.press("Enter")
    expect(page.locator("#thumbs li")).to_have_count(3)
    expect(page.locator("#budget-body tbody tr")).to_have_count(3)
    expect(page.locator("#verdict")).to_contain_text("invalid_image_url")
    page.click("#view-code")
    expect(page.locator("#code")).to_contain_text('{"url": "http://127.0.0.1:9/photo.jpg"}')
    expect(page.locator("#code")).to_contain_text('data_uri("pasted-image-1.jpeg", "image/jpeg")')


def test_gateway_errors_are_shown_with_their_message_and_code(page: Page, recording_upstream):
    error = page.locator("#error")
    verdict = page.locator("#verdict")

    # An upstream that cannot be reached: 502 from the chat route.
    page.select_option("#model", "offline-model")
    expect(verdict).to_contain_text("would accept")
    page.click("#send")
    expect(error).to_contain_text("upstream_unavailable")
    expect(error).to_contain_text("HTTP 502")
    expect(error).to_contain_text("the upstream `offline` could not be reached")
    expect(page.locator("#answer-status")).to_have_text("The gateway refused the request.")

    # A budget the photo does not fit: the preview warns, and sending gets the same refusal.
    page.select_option("#model", "tiny-ctx")
    page.set_input_files("#files", str(PHOTO_2560x1920))
    expect(verdict).to_contain_text("The gateway would refuse this request")
    expect(verdict).to_contain_text("context_length_exceeded")
    expect(verdict).to_contain_text("tiny-ctx holds 2,000")
    page.click("#send")
    expect(error).to_contain_text("context_length_exceeded")
    expect(error).to_contain_text("HTTP 400")
    expect(error).to_contain_text("tiny-ctx holds 2,000")
    screenshot(page, "playground-refused.png")

    # A model id the gateway does not serve, typed by hand.
    page.select_option("#model", label="Other model id…")
    expect(page.locator("#model-custom")).to_be_focused()
    page.keyboard.type("no-such-model")
    expect(verdict).to_contain_text("model_not_found")
    expect(verdict).to_contain_text("the model `no-such-model` does not exist")

    # An upstream that breaks mid-stream: the in-band error event after the partial answer.
    page.select_option("#model", "cut-model")
    page.click('[aria-label="Remove image 1, Wood.jpg"]')
    expect(verdict).to_contain_text("would accept")
    page.click("#send")
    expect(error).to_contain_text("in the stream")
    expect(error).to_contain_text("upstream_unavailable")
    expect(error).to_contain_text("the answer is truncated")
    expect(page.locator("#answer")).to_have_text("A partial ")
    expect(page.locator("#answer-status")).to_have_text("The stream ended with an error.")
    # Only the cut request reached the upstream.
    assert [b["model"] for b in upstream_bodies(recording_upstream)] == ["cut-model"]


def test_stop_aborts_the_stream_and_the_upstream_request(page: Page, recording_upstream, answers):
    gate = answers.hold()
    page.fill("#prompt", "Describe a long story.")
    page.click("#send")
    expect(page.locator("#answer")).to_have_text("The photo ")
    page.click("#stop-stream")
    expect(page.locator("#answer-status")).to_have_text("Stopped after 10 characters.")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop-stream")).to_be_disabled()
    gate.set()
    # The gateway dropped the upstream request when the page went away.
    assert recording_upstream.peer_closed_mid_response.wait(10)
    assert page.locator("#answer").inner_text() == "The photo "
    # Without images the prompt goes as a plain string; stream off gives one whole answer.
    page.uncheck("#stream")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#answer")).to_have_text("".join(ANSWER))
    expect(page.locator("#answer-status")).to_have_text("Done.")
    first, second = upstream_bodies(recording_upstream)
    assert first["messages"] == [{"role": "user", "content": "Describe a long story."}]
    assert "stream" not in second


def test_the_api_key_goes_on_every_call_and_stays_in_session_storage(page: Page, recording_upstream):
    seen: dict[str, set] = {}
    page.on("request", lambda r: seen.setdefault(r.url.split("/", 3)[3], set()).add(r.headers.get("authorization")))
    # Changing the key lists the models again, then inspects again, with the key.
    with page.expect_request(lambda r: r.url.endswith("/gateway/inspect")):
        page.fill("#api-key", "sk-playground-test")
    expect(page.locator("#verdict")).to_contain_text("would accept")
    page.click("#send")
    expect(page.locator("#answer-status")).to_have_text("Done.")
    auth = "Bearer sk-playground-test"
    assert seen["v1/models"] == {auth}
    assert seen["gateway/inspect"] == {auth}
    assert seen["v1/chat/completions"] == {auth}
    # This gateway forwards the client's key (no api_key_env), so the upstream gets it too.
    assert recording_upstream.requests[-1].header("authorization") == auth
    assert page.evaluate("sessionStorage.getItem('vision-gateway.playground.api-key')") == "sk-playground-test"
    assert page.evaluate("localStorage.length") == 0
    page.click("#view-code")
    for tab in ("#tab-python", "#tab-curl", "#tab-js"):
        page.click(tab)
        expect(page.locator("#code")).to_contain_text("OPENAI_API_KEY")
        expect(page.locator("#code")).not_to_contain_text("sk-playground-test")


def test_every_control_is_labelled_and_a_narrow_window_has_one_column(page: Page):
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute('aria-label') && !c.textContent.trim())
            .map((c) => c.id || c.outerHTML)"""
    )
    assert unlabelled == []
    page.set_viewport_size({"width": 400, "height": 800})
    page.set_input_files("#files", str(PHOTO_2560x1920))
    expect(page.locator("#budget-body")).to_contain_text("3,120")
    no_overflow = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert no_overflow, "the page scrolls sideways at 400 px"
    request = page.locator("#chat-form").bounding_box()
    budget = page.locator("#budget").bounding_box()
    assert request and budget and budget["y"] > request["y"] + request["height"] - 1, "one column"
    screenshot(page, "playground-narrow.png")


def test_with_gateway_keys_the_page_loads_without_one_and_works_with_one(browser, start_gateway, recording_upstream, answers):
    key = "sk-gateway-playground"
    g = start_gateway(
        upstreams=[{"name": "recording", "base_url": recording_upstream.base_url}],
        models=[{"id": MODEL, "upstream": "recording"}, {"id": "other-team-model", "upstream": "recording"}],
        keys=[{"name": "team-a", "sha256": sha256_hex(key.encode()), "models": [MODEL]}],
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{g.url}/playground")  # the page itself needs no key
        expect(page.locator("#model-status")).to_contain_text("invalid_api_key")
        page.fill("#api-key", key)
        expect(page.locator("#model")).to_have_value(MODEL)
        expect(page.locator("#model-status")).to_have_text("")
        # /v1/models lists the key's models only.
        assert page.locator("#model option").all_inner_texts() == [MODEL, "Other model id…"]
        expect(page.locator("#verdict")).to_contain_text("would accept")
        page.click("#send")
        expect(page.locator("#answer")).to_have_text("".join(ANSWER))
        # The gateway checks its key and never forwards it.
        assert recording_upstream.requests[-1].header("authorization") is None
        # A model outside the key's list: the preview and the chat route both say 403.
        page.select_option("#model", label="Other model id…")
        page.keyboard.type("other-team-model")
        expect(page.locator("#verdict")).to_contain_text("model_not_permitted")
        page.click("#send")
        expect(page.locator("#error")).to_contain_text("model_not_permitted")
        expect(page.locator("#error")).to_contain_text("HTTP 403")
        assert len(recording_upstream.requests) == 1
    finally:
        context.close()
