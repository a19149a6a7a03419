// vision-gateway playground: plain JavaScript, no framework, no build step, no network
// access beyond this gateway (the page's content-security-policy allows nothing else).
//
// It uses the gateway's public routes only, as any client would:
//   GET  /v1/models            the model switcher
//   POST /gateway/inspect      the budget preview and the model's max_images (same body as chat)
//   POST /v1/chat/completions  the answer, streamed (SSE over fetch) or not
// With an API key set, every call carries `Authorization: Bearer <key>`.

const KEY_STORAGE = "vision-gateway.playground.api-key";
const CUSTOM = "\u0000custom";
const $ = (id) => document.getElementById(id);

const el = {
  model: $("model"), modelCustomField: $("model-custom-field"), modelCustom: $("model-custom"),
  modelStatus: $("model-status"), apiKey: $("api-key"),
  form: $("chat-form"), files: $("files"), choose: $("choose"), dropzone: $("dropzone"),
  imageUrl: $("image-url"), addUrl: $("add-url"), imageNote: $("image-note"),
  imageCount: $("image-count"), thumbs: $("thumbs"),
  system: $("system"), prompt: $("prompt"),
  temperature: $("temperature"), maxTokens: $("max_tokens"), topP: $("top_p"), stop: $("stop"),
  stream: $("stream"), formError: $("form-error"),
  send: $("send"), stopStream: $("stop-stream"), viewCode: $("view-code"),
  budgetBody: $("budget-body"), verdict: $("verdict"),
  answer: $("answer"), answerStatus: $("answer-status"), error: $("error"), usage: $("usage"),
  dialog: $("code-dialog"), code: $("code"), codeNote: $("code-note"), codePanel: $("code-panel"),
  copy: $("copy"), copyStatus: $("copy-status"), closeCode: $("close-code"),
  tabs: [...document.querySelectorAll('[role="tab"]')],
};

const state = {
  images: [], // {id, name, kind: "file"|"url", url (data: URI or http(s) URL, null while reading), ready, thumb, size}
  nextId: 1,
  pasted: 0,
  limits: new Map(), // model id -> max_images, from /gateway/inspect
  inspectTimer: 0,
  inspectCtl: null,
  inspectSeq: 0,
  chatCtl: null,
  lang: "python",
};

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

function apiKey() {
  return el.apiKey.value.trim();
}

function authHeaders(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function currentModel() {
  return el.model.value === CUSTOM ? el.modelCustom.value.trim() : el.model.value;
}

function node(tag, props = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") n.className = v;
    else if (k === "text") n.textContent = v;
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v);
  }
  for (const c of children) if (c != null) n.append(c);
  return n;
}

const nf = new Intl.NumberFormat("en-US");
const fmt = (n) => nf.format(n);

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** An OpenAI-style error from a failed response: {status, message, code, type, param, requestId}. */
async function errorOf(res) {
  const out = { status: res.status, requestId: res.headers.get("x-request-id") };
  let text = "";
  try {
    text = await res.text();
  } catch {
    // the body could not be read; the status says enough
  }
  try {
    const e = JSON.parse(text).error;
    if (e && typeof e === "object") {
      return { ...out, message: String(e.message ?? ""), code: e.code ?? null, type: e.type ?? null, param: e.param ?? null };
    }
  } catch {
    // not JSON: shown as text below
  }
  return { ...out, message: text.slice(0, 500) || res.statusText || "no message", code: null, type: null, param: null };
}

// ---------------------------------------------------------------------------------------
// API key and models
// ---------------------------------------------------------------------------------------

let keyTimer = 0;
el.apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
el.apiKey.addEventListener("input", () => {
  const key = apiKey();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  clearTimeout(keyTimer);
  keyTimer = setTimeout(() => {
    state.limits.clear();
    loadModels();
  }, 400);
});

async function loadModels() {
  const previous = currentModel();
  el.modelStatus.textContent = "Loading models…";
  el.modelStatus.className = "status";
  let ids = [];
  try {
    const res = await fetch("/v1/models", { headers: authHeaders() });
    if (!res.ok) {
      const e = await errorOf(res);
      el.modelStatus.textContent = `Models could not be listed: ${e.message}${e.code ? ` (${e.code})` : ""}`;
      el.modelStatus.className = "status bad";
    } else {
      const list = await res.json();
      ids = (list.data ?? []).map((m) => String(m.id));
      el.modelStatus.textContent = "";
    }
  } catch (err) {
    el.modelStatus.textContent = `Models could not be listed: ${err.message}`;
    el.modelStatus.className = "status bad";
  }
  el.model.replaceChildren(
    ...ids.map((id) => node("option", { value: id, text: id })),
    node("option", { value: CUSTOM, text: "Other model id…" }),
  );
  if (previous && ids.includes(previous)) el.model.value = previous;
  else if (ids.length) el.model.value = ids[0];
  else {
    el.model.value = CUSTOM;
    if (previous) el.modelCustom.value = previous;
  }
  modelChanged();
}

function modelChanged() {
  el.modelCustomField.hidden = el.model.value !== CUSTOM;
  scheduleInspect(0);
}

// The model and key fields sit in a form of their own (so browsers treat the key as a
// credential field); it is never submitted.
$("conn-form").addEventListener("submit", (e) => e.preventDefault());
el.model.addEventListener("change", () => {
  modelChanged();
  if (el.model.value === CUSTOM) el.modelCustom.focus();
});
el.modelCustom.addEventListener("input", () => scheduleInspect());

// ---------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------

/** max_images of the current model: from the last inspection, or a small one made now. */
async function maxImages() {
  const model = currentModel();
  if (!model) return null;
  if (state.limits.has(model)) return state.limits.get(model);
  try {
    const res = await fetch("/gateway/inspect", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ model, messages: [{ role: "user", content: "" }] }),
    });
    if (res.ok) {
      const report = await res.json();
      state.limits.set(model, report.max_images);
      return report.max_images;
    }
  } catch {
    // unknown: the gateway's own check still applies when sending
  }
  return null;
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result));
    r.onerror = () => reject(r.error ?? new Error("the file could not be read"));
    r.readAsDataURL(file);
  });
}

async function addFiles(files, { pasted = false } = {}) {
  files = [...files];
  if (!files.length) return;
  const max = await maxImages();
  const refused = [];
  const notImages = [];
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      notImages.push(file.name || "a pasted item");
      continue;
    }
    if (max != null && state.images.length >= max) {
      refused.push(file.name || "a pasted image");
      continue;
    }
    let name = file.name;
    if (pasted || !name) {
      // Clipboard images all arrive as "image.png"; the code view reads files by name.
      state.pasted += 1;
      name = `pasted-image-${state.pasted}.${file.type.split("/")[1]?.replace(/[^a-z0-9]/g, "") || "png"}`;
    }
    const img = { id: state.nextId++, name, kind: "file", url: null, size: file.size, thumb: URL.createObjectURL(file) };
    img.ready = readAsDataUrl(file).then(
      (url) => {
        img.url = url;
      },
      (err) => {
        img.failed = `could not be read: ${err.message}`;
      },
    );
    state.images.push(img);
    img.ready.then(() => {
      renderThumbs();
      scheduleInspect(0);
    });
  }
  const notes = [];
  if (refused.length) {
    notes.push(
      `${currentModel()} accepts at most ${max} images a request: ${plural(refused.length, "image")} not added (${refused.join(", ")}). Remove one to add another.`,
    );
  }
  if (notImages.length) notes.push(`Not an image, not added: ${notImages.join(", ")}.`);
  imageNote(notes.join(" "), notes.length > 0);
  renderThumbs();
}

async function addUrl() {
  const raw = el.imageUrl.value.trim();
  if (!raw) return;
  let url;
  try {
    url = new URL(raw);
  } catch {
    url = null;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
    imageNote("Enter an http or https address of an image (to send a file, choose it, drop it or paste it).", true);
    el.imageUrl.focus();
    return;
  }
  const max = await maxImages();
  if (max != null && state.images.length >= max) {
    imageNote(`${currentModel()} accepts at most ${max} images a request: the URL was not added. Remove one to add another.`, true);
    return;
  }
  const name = url.pathname.split("/").pop() || url.host;
  state.images.push({ id: state.nextId++, name, kind: "url", url: url.href, ready: Promise.resolve(), thumb: url.href, size: null });
  el.imageUrl.value = "";
  imageNote("", false);
  renderThumbs();
  scheduleInspect(0);
}

function removeImage(id) {
  const i = state.images.findIndex((img) => img.id === id);
  if (i < 0) return;
  const [img] = state.images.splice(i, 1);
  if (img.kind === "file") URL.revokeObjectURL(img.thumb);
  imageNote("", false);
  renderThumbs();
  // Keep the keyboard where it was: the next image's remove button, else the add button.
  const next = el.thumbs.querySelectorAll("button")[Math.min(i, state.images.length - 1)];
  (next ?? el.choose).focus();
  scheduleInspect(0);
}

function imageNote(text, bad) {
  el.imageNote.textContent = text;
  el.imageNote.className = bad ? "note bad" : "note";
}

function renderThumbs() {
  const max = state.limits.get(currentModel());
  el.imageCount.textContent = state.images.length || max != null
    ? `(${state.images.length}${max != null ? ` of at most ${max}` : ""})`
    : "";
  el.thumbs.replaceChildren(
    ...state.images.map((img, i) => {
      const meta = img.failed ?? (img.kind === "url" ? "URL" : img.url ? bytes(img.size) : "reading…");
      return node(
        "li",
        { class: img.failed ? "failed" : "", "data-image": String(i + 1) },
        node("img", { src: img.thumb, alt: `Image ${i + 1}: ${img.name}` }),
        node("span", { class: "name", title: img.name, text: `${i + 1}. ${img.name}` }),
        node("span", { class: "meta", text: meta }),
        node("button", { type: "button", "aria-label": `Remove image ${i + 1}, ${img.name}`, text: "Remove", onclick: () => removeImage(img.id) }),
      );
    }),
  );
}

el.choose.addEventListener("click", () => el.files.click());
el.files.addEventListener("change", () => {
  addFiles(el.files.files);
  el.files.value = "";
});
el.addUrl.addEventListener("click", addUrl);
el.imageUrl.addEventListener("keydown", (e) => {
  if (e.key === "Enter") {
    e.preventDefault();
    addUrl();
  }
});
for (const type of ["dragenter", "dragover"]) {
  el.dropzone.addEventListener(type, (e) => {
    e.preventDefault();
    el.dropzone.classList.add("over");
  });
}
el.dropzone.addEventListener("dragleave", () => el.dropzone.classList.remove("over"));
el.dropzone.addEventListener("drop", (e) => {
  e.preventDefault();
  el.dropzone.classList.remove("over");
  const dt = e.dataTransfer;
  if (dt.files.length) addFiles(dt.files);
  else {
    const uri = (dt.getData("text/uri-list") || dt.getData("text/plain")).split("\n")[0]?.trim();
    if (uri) {
      el.imageUrl.value = uri;
      addUrl();
    }
  }
});
// Dropping a file anywhere else must not navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) {
    e.preventDefault();
    addFiles(files, { pasted: true });
  }
});

// ---------------------------------------------------------------------------------------
// The request body
// ---------------------------------------------------------------------------------------

/** Stands for an image in a body under construction; serialised as its URL. */
class ImageRef {
  constructor(img) {
    this.img = img;
  }
  toJSON() {
    return this.img.url;
  }
}

function numberParam(input, label, { min, max, integer }) {
  const raw = input.value.trim();
  if (raw === "" && input.validity.valid) return { value: undefined };
  const v = Number(raw);
  const bad = raw === "" || !Number.isFinite(v) || (integer && !Number.isInteger(v)) ||
    (min != null && v < min) || (max != null && v > max);
  if (bad) {
    const range = max != null ? `from ${min} to ${max}` : `of at least ${min}`;
    return { error: `${label} must be ${integer ? "a whole number" : "a number"} ${range}, or empty.` };
  }
  return { value: v };
}

/**
 * The chat request the form describes: {body, error}. Images appear as ImageRef (their
 * URL once serialised). Only parameters that were set appear, in a fixed order.
 */
function buildBody() {
  const model = currentModel();
  if (!model) return { error: "Choose a model (or type a model id)." };
  const prompt = el.prompt.value;
  const messages = [];
  if (el.system.value.trim()) messages.push({ role: "system", content: el.system.value });
  let content;
  if (state.images.length) {
    content = [];
    if (prompt.trim()) content.push({ type: "text", text: prompt });
    for (const img of state.images) content.push({ type: "image_url", image_url: { url: new ImageRef(img) } });
  } else {
    content = prompt;
  }
  messages.push({ role: "user", content });
  const body = { model, messages };
  const params = [
    ["temperature", numberParam(el.temperature, "temperature", { min: 0, max: 2 })],
    ["max_tokens", numberParam(el.maxTokens, "max_tokens", { min: 1, integer: true })],
    ["top_p", numberParam(el.topP, "top_p", { min: 0, max: 1 })],
  ];
  for (const [name, p] of params) {
    if (p.error) return { error: p.error, body };
    if (p.value !== undefined) body[name] = p.value;
  }
  const stops = el.stop.value.split("\n").filter((s) => s !== "");
  if (stops.length > 4) return { error: "stop takes at most 4 sequences.", body };
  if (stops.length === 1) body.stop = stops[0];
  else if (stops.length > 1) body.stop = stops;
  if (el.stream.checked) body.stream = true;
  return { body };
}

// ---------------------------------------------------------------------------------------
// Budget preview (POST /gateway/inspect)
// ---------------------------------------------------------------------------------------

function scheduleInspect(delay = 400) {
  clearTimeout(state.inspectTimer);
  state.inspectTimer = setTimeout(inspect, delay);
}

async function inspect() {
  const seq = ++state.inspectSeq;
  state.inspectCtl?.abort();
  const { body, error } = buildBody();
  if (!body) {
    el.budgetBody.replaceChildren(node("p", { class: "muted", text: error }));
    setVerdict("", "");
    return;
  }
  await Promise.all(state.images.map((img) => img.ready));
  if (seq !== state.inspectSeq) return;
  if (state.images.some((img) => img.failed)) {
    setVerdict("Remove the images that could not be read.", "refused");
    return;
  }
  const ctl = new AbortController();
  state.inspectCtl = ctl;
  setVerdict("Checking with the gateway…", "pending");
  let report;
  try {
    const res = await fetch("/gateway/inspect", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal: ctl.signal,
    });
    if (seq !== state.inspectSeq) return;
    if (!res.ok) {
      const e = await errorOf(res);
      if (seq !== state.inspectSeq) return;
      el.budgetBody.replaceChildren(node("p", { class: "muted", text: `The gateway did not inspect this request (HTTP ${e.status}).` }));
      setVerdict(refusal(e), "refused");
      return;
    }
    report = await res.json();
  } catch (err) {
    if (err.name !== "AbortError" && seq === state.inspectSeq) setVerdict(`The budget could not be checked: ${err.message}`, "refused");
    return;
  }
  if (seq !== state.inspectSeq) return;
  state.limits.set(report.model, report.max_images);
  renderBudget(report);
  renderThumbs();
}

function refusal(e) {
  const f = document.createDocumentFragment();
  f.append("The gateway would refuse this request: ", e.message, " ");
  if (e.code) f.append(node("span", { class: "code-tag", text: e.code }));
  return f;
}

function setVerdict(content, kind) {
  if (content === "") el.verdict.replaceChildren();
  else el.verdict.replaceChildren(content);
  el.verdict.className = `verdict ${kind}`;
}

function renderBudget(r) {
  const parts = [];
  if (r.images.length) {
    const rows = r.images.map((im) => {
      const img = state.images[im.index - 1];
      const name = img ? img.name : `image ${im.index}`;
      if (im.error) {
        return node("tr", {}, node("td", { text: String(im.index) }), node("td", { text: name }),
          node("td", { colspan: "2", class: "bad", text: `${im.error.message} (${im.error.code})` }));
      }
      const o = im.original;
      const s = im.sent;
      const what = im.action === "unchanged" ? "as is" : im.action;
      return node("tr", {},
        node("td", { text: String(im.index) }),
        node("td", { text: `${name} (${o.format.toUpperCase()} ${o.width}×${o.height}, ${bytes(o.bytes)})` }),
        node("td", { text: `${s.format.toUpperCase()} ${s.width}×${s.height}, ${bytes(s.bytes)}, ${what}${im.cached ? ", cached" : ""}` }),
        node("td", { class: "num", text: fmt(im.tokens) }));
    });
    parts.push(node("div", { class: "table-wrap" }, node("table", {},
      node("caption", { class: "muted", text: "Each image as the gateway will send it upstream" }),
      node("thead", {}, node("tr", {}, node("th", { scope: "col", text: "#" }), node("th", { scope: "col", text: "Image" }),
        node("th", { scope: "col", text: "Sent" }), node("th", { scope: "col", class: "num", text: "Tokens" }))),
      node("tbody", {}, ...rows))));
  } else if (r.image_count > r.images.length) {
    parts.push(node("p", { text: `${r.image_count} images; ${r.model} accepts at most ${r.max_images}.` }));
  }
  const t = r.tokens;
  const win = t.context_window;
  const reserved = t.max_tokens ? `max_tokens ${fmt(t.max_tokens)}` : "max_tokens not set (0 reserved)";
  const sum = `Text ${fmt(t.text)} + images ${fmt(t.images)} + ${reserved} = ${fmt(t.total)} tokens`;
  parts.push(node("p", { class: "totals", id: "budget-total" },
    win ? `${sum} of ${fmt(win)} (${((100 * t.total) / win).toFixed(1)}% of the context window)` : `${sum}; no context window is configured for ${r.model}, so there is no budget check`));
  if (win) {
    parts.push(node("meter", { min: "0", max: String(win), value: String(Math.min(t.total, win)), low: String(win * 0.75), high: String(win * 0.95), optimum: "0", "aria-label": "Share of the context window used" }));
  }
  parts.push(node("p", { class: "muted", text: `${r.model}: at most ${r.max_images} images a request.` }));
  el.budgetBody.replaceChildren(...parts);
  if (r.accepted) setVerdict("The gateway would accept this request.", "ok");
  else setVerdict(refusal(r.error ?? { message: "refused", code: null }), "refused");
}

for (const input of [el.prompt, el.system, el.maxTokens]) input.addEventListener("input", () => scheduleInspect());

// ---------------------------------------------------------------------------------------
// Sending and streaming
// ---------------------------------------------------------------------------------------

let answerText = null;

function setBusy(busy) {
  el.send.disabled = busy;
  el.stopStream.disabled = !busy;
  el.answer.setAttribute("aria-busy", String(busy));
}

function showError(e, where) {
  const head = [];
  if (e.code) head.push(e.code);
  if (e.status) head.push(`HTTP ${e.status}`);
  el.error.replaceChildren(
    node("p", { class: "head", text: `Error${where ? ` ${where}` : ""}${head.length ? `: ${head.join(" · ")}` : ""}` }),
    node("p", { class: "message", text: e.message }),
    e.param ? node("p", { text: `param: ${e.param}` }) : null,
    e.requestId ? node("p", { class: "muted", text: `x-request-id: ${e.requestId}` }) : null,
  );
  el.error.hidden = false;
}

function appendAnswer(text) {
  const nearBottom = el.answer.scrollHeight - el.answer.scrollTop - el.answer.clientHeight < 40;
  answerText.appendData(text);
  if (nearBottom) el.answer.scrollTop = el.answer.scrollHeight;
}

function showUsage(u, finish) {
  const bits = [];
  if (finish) bits.push(`finish_reason: ${finish}`);
  if (u) bits.push(`usage: prompt ${fmt(u.prompt_tokens ?? 0)}, completion ${fmt(u.completion_tokens ?? 0)}, total ${fmt(u.total_tokens ?? 0)} tokens`);
  el.usage.textContent = bits.join(" · ");
}

async function send(e) {
  e?.preventDefault();
  if (state.chatCtl) return;
  el.formError.textContent = "";
  const { body, error } = buildBody();
  if (error) {
    el.formError.textContent = error;
    return;
  }
  if (!state.images.length && !el.prompt.value.trim()) {
    el.formError.textContent = "Type a prompt or add an image.";
    el.prompt.focus();
    return;
  }
  const ctl = new AbortController();
  state.chatCtl = ctl;
  setBusy(true);
  el.error.hidden = true;
  el.usage.textContent = "";
  answerText = document.createTextNode("");
  el.answer.replaceChildren(answerText);
  el.answerStatus.textContent = "Sending…";
  // In one column the answer is below the form: bring it into view.
  el.answer.scrollIntoView({ block: "nearest" });
  try {
    await Promise.all(state.images.map((img) => img.ready));
    const failed = state.images.find((img) => img.failed);
    if (failed) throw new Error(`${failed.name} ${failed.failed}`);
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal: ctl.signal,
    });
    if (!res.ok) {
      showError(await errorOf(res));
      el.answerStatus.textContent = "The gateway refused the request.";
      return;
    }
    const isSse = (res.headers.get("content-type") ?? "").includes("text/event-stream");
    if (isSse) {
      el.answerStatus.textContent = "Streaming…";
      const end = await readStream(res, res.headers.get("x-request-id"));
      el.answerStatus.textContent = end;
    } else {
      const j = await res.json();
      const choice = j.choices?.[0];
      appendAnswer(choice?.message?.content ?? "");
      showUsage(j.usage, choice?.finish_reason);
      el.answerStatus.textContent = "Done.";
    }
  } catch (err) {
    if (err.name === "AbortError") {
      el.answerStatus.textContent = `Stopped after ${fmt(answerText.length)} characters.`;
    } else {
      showError({ message: err.message, code: null, status: null });
      el.answerStatus.textContent = "The request failed.";
    }
  } finally {
    state.chatCtl = null;
    setBusy(false);
  }
}

/**
 * Reads an SSE body: `data:` lines of each event (events end at a blank line), `[DONE]`,
 * chunks whose `choices[0].delta.content` is appended as it arrives, and in-band
 * `{"error": {...}}` events, which are shown like any gateway error. Returns the status text.
 */
async function readStream(res, requestId) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let finish = null;
  let usage = null;
  let failed = false;
  const handle = (event) => {
    const data = event
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
      .join("\n");
    if (!data) return false;
    if (data === "[DONE]") return true;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      return false; // not JSON: not an event a chat stream defines
    }
    if (chunk.error) {
      const e = chunk.error;
      showError({ message: String(e.message ?? ""), code: e.code ?? null, param: e.param ?? null, requestId }, "in the stream");
      failed = true;
      return false;
    }
    const choice = chunk.choices?.[0];
    const text = choice?.delta?.content;
    if (text) appendAnswer(text);
    if (choice?.finish_reason) finish = choice.finish_reason;
    if (chunk.usage) usage = chunk.usage;
    return false;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf = (buf + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (handle(event)) {
        showUsage(usage, finish);
        await reader.cancel().catch(() => {});
        return failed ? "The stream ended with an error." : "Done.";
      }
    }
  }
  if (buf.trim()) handle(buf);
  showUsage(usage, finish);
  if (failed) return "The stream ended with an error.";
  return "The stream ended without [DONE]: the answer may be incomplete.";
}

el.form.addEventListener("submit", send);
el.stopStream.addEventListener("click", () => state.chatCtl?.abort());
for (const input of [el.prompt, el.system]) {
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e);
  });
}

// ---------------------------------------------------------------------------------------
// View code
// ---------------------------------------------------------------------------------------

/** Code written as is inside a rendered literal. */
class Raw {
  constructor(code) {
    this.code = code;
  }
}

const WIDTH = 92;

/** A Python ("py") or JavaScript ("js") literal for a JSON value; wraps when it is long. */
function literal(v, lang, level) {
  if (v instanceof Raw) return v.code;
  if (v instanceof ImageRef) return imageExpr(v.img, lang);
  if (v === null || v === undefined) return lang === "py" ? "None" : "null";
  if (typeof v === "boolean") return lang === "py" ? (v ? "True" : "False") : String(v);
  if (typeof v === "number") return String(v);
  if (typeof v === "string") return JSON.stringify(v);
  const pad = (n) => (lang === "py" ? "    " : "  ").repeat(n);
  let items;
  let open;
  let close;
  if (Array.isArray(v)) {
    items = v.map((x) => literal(x, lang, level + 1));
    [open, close] = ["[", "]"];
  } else {
    items = Object.entries(v).map(([k, x]) => `${lang === "js" && /^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k)}: ${literal(x, lang, level + 1)}`);
    [open, close] = lang === "js" ? ["{ ", " }"] : ["{", "}"];
  }
  if (!items.length) return open.trim() + close.trim();
  const inline = open + items.join(", ") + close;
  if (!inline.includes("\n") && pad(level).length + inline.length <= WIDTH - 10) return inline;
  return `${open.trim()}\n${items.map((i) => `${pad(level + 1)}${i},`).join("\n")}\n${pad(level)}${close.trim()}`;
}

function mimeOf(dataUrl) {
  return /^data:([^;,]+)/.exec(dataUrl ?? "")?.[1] ?? "image/png";
}

function imageExpr(img, lang) {
  if (img.kind === "url") return JSON.stringify(img.url);
  const args = `${JSON.stringify(img.name)}, ${JSON.stringify(mimeOf(img.url))}`;
  return lang === "py" ? `data_uri(${args})` : `dataUri(${args})`;
}

function pythonCode(body, base, key) {
  const files = state.images.some((img) => img.kind === "file");
  const lines = ["# pip install openai"];
  if (files) lines.push("import base64");
  if (key) lines.push("import os");
  if (files || key) lines.push("");
  lines.push("from openai import OpenAI", "", "client = OpenAI(", `    base_url=${JSON.stringify(base)},`);
  lines.push(key
    ? '    api_key=os.environ["OPENAI_API_KEY"],  # the key typed in the playground'
    : '    api_key="none",  # the playground sent no key; the SDK needs some value');
  lines.push(")", "");
  if (files) {
    lines.push(
      "",
      "def data_uri(path, mime):",
      '    """An image file as a base64 data: URI, as the playground sent it."""',
      '    with open(path, "rb") as f:',
      '        return f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"',
      "",
      "",
    );
  }
  const stream = body.stream === true;
  lines.push(`${stream ? "stream" : "completion"} = client.chat.completions.create(`);
  for (const [k, v] of Object.entries(body)) lines.push(`    ${k}=${literal(v, "py", 1)},`);
  lines.push(")");
  if (stream) {
    lines.push(
      "for chunk in stream:",
      "    if chunk.choices:",
      '        print(chunk.choices[0].delta.content or "", end="", flush=True)',
      "print()",
    );
  } else {
    lines.push("print(completion.choices[0].message.content)");
  }
  return lines.join("\n") + "\n";
}

function jsCode(body, base, key) {
  const files = state.images.some((img) => img.kind === "file");
  const lines = ["// npm install openai   (Node 18+; save as playground.mjs)"];
  if (files) lines.push('import fs from "node:fs";');
  lines.push('import OpenAI from "openai";', "", "const client = new OpenAI({", `  baseURL: ${JSON.stringify(base)},`);
  lines.push(key
    ? "  apiKey: process.env.OPENAI_API_KEY, // the key typed in the playground"
    : '  apiKey: "none", // the playground sent no key; the SDK needs some value');
  lines.push("});");
  if (files) {
    lines.push(
      "",
      "// An image file as a base64 data: URI, as the playground sent it.",
      "const dataUri = (path, mime) => `data:${mime};base64,${fs.readFileSync(path).toString(\"base64\")}`;",
    );
  }
  lines.push("");
  const stream = body.stream === true;
  lines.push(`const ${stream ? "stream" : "completion"} = await client.chat.completions.create(${literal(body, "js", 0)});`);
  if (stream) {
    lines.push(
      "for await (const chunk of stream) {",
      '  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");',
      "}",
      'process.stdout.write("\\n");',
    );
  } else {
    lines.push("console.log(completion.choices[0].message.content);");
  }
  return lines.join("\n") + "\n";
}

/** A shell word in single quotes. */
function sq(s) {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

function curlCode(body, base, key) {
  const files = state.images.filter((img) => img.kind === "file");
  const stream = body.stream === true;
  const head = [`curl ${stream ? "-sN" : "-s"} ${sq(`${base}/chat/completions`)}`, "-H 'Content-Type: application/json'"];
  if (key) head.push('-H "Authorization: Bearer $OPENAI_API_KEY"');
  if (!files.length) {
    const json = JSON.stringify(body, null, 2);
    return `${[...head, "-d @- <<'JSON'"].join(" \\\n  ")}\n${json}\nJSON\n`;
  }
  // Each image file is read by base64 while the body is written to request.json: a body of
  // megabytes cannot go on a command line.
  const nonce = Math.random().toString(36).slice(2);
  const marks = new Map(files.map((img, i) => [img, `@@image-${i}-${nonce}@@`]));
  // A replacer sees an ImageRef's toJSON() result; the ref itself is this[key].
  const json = JSON.stringify(body, function (k, v) {
    const ref = this[k];
    return ref instanceof ImageRef && ref.img.kind === "file" ? marks.get(ref.img) : v;
  }, 2);
  const lines = [
    "# The request body, with each image file read as base64 into it",
    "# (GNU base64; on macOS use `base64 -i FILE` instead of `base64 -w0 FILE`).",
    "{",
  ];
  let rest = json;
  for (const img of files) {
    const mark = `"${marks.get(img)}"`;
    const at = rest.indexOf(mark);
    lines.push(`  printf '%s' ${sq(`${rest.slice(0, at)}"data:${mimeOf(img.url)};base64,`)}`);
    lines.push(`  base64 -w0 ${sq(img.name)}`);
    rest = `"${rest.slice(at + mark.length)}`;
  }
  lines.push(`  printf '%s\\n' ${sq(rest)}`, "} > request.json", "");
  lines.push([...head, "--data-binary @request.json"].join(" \\\n  "));
  return lines.join("\n") + "\n";
}

function renderCode() {
  const { body, error } = buildBody();
  if (!body || error) {
    el.code.textContent = "";
    el.codeNote.textContent = error;
    el.codeNote.className = "bad";
    return;
  }
  const base = `${location.origin}/v1`;
  const key = apiKey() !== "";
  const code = state.lang === "python" ? pythonCode(body, base, key) : state.lang === "curl" ? curlCode(body, base, key) : jsCode(body, base, key);
  el.code.textContent = code;
  const notes = [];
  if (state.images.some((img) => img.kind === "file")) notes.push("Image files are read from the current directory, by the names shown.");
  if (key) notes.push("Set OPENAI_API_KEY to your key first; the code never contains it.");
  notes.push("Only the parameters you set are sent; the others keep the model's defaults.");
  el.codeNote.textContent = notes.join(" ");
  el.codeNote.className = "muted";
}

function selectTab(tab, focus) {
  for (const t of el.tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
  }
  state.lang = tab.dataset.lang;
  el.codePanel.setAttribute("aria-labelledby", tab.id);
  el.copyStatus.textContent = "";
  renderCode();
  if (focus) tab.focus();
}

for (const tab of el.tabs) {
  tab.addEventListener("click", () => selectTab(tab, false));
  tab.addEventListener("keydown", (e) => {
    const i = el.tabs.indexOf(tab);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: el.tabs.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    selectTab(el.tabs[(to + el.tabs.length) % el.tabs.length], true);
  });
}

el.viewCode.addEventListener("click", () => {
  el.copyStatus.textContent = "";
  renderCode();
  el.dialog.showModal();
});
el.closeCode.addEventListener("click", () => el.dialog.close());
el.dialog.addEventListener("click", (e) => {
  if (e.target === el.dialog) el.dialog.close(); // a click on the backdrop
});

el.copy.addEventListener("click", async () => {
  const text = el.code.textContent;
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      ok = true;
    }
  } catch {
    ok = false;
  }
  if (!ok) {
    // Plain http on a non-local address has no clipboard API: select and copy instead.
    const range = document.createRange();
    range.selectNodeContents(el.code);
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    ok = document.execCommand("copy");
  }
  el.copyStatus.textContent = ok ? "Copied." : "Select the code and copy it with Ctrl+C.";
});

// ---------------------------------------------------------------------------------------

loadModels();
