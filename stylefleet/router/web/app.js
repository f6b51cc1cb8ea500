// The page at GET /: styles from GET /v1/styles, pictures in, results out. Plain ES modules, no
// build step; everything it loads comes from the service itself.

import { applyStyle, explain, labelOf, listStyles, supportLine } from "./api.js";
import { runBatch, slugOf } from "./batch.js";
import { buildForm, el } from "./form.js";

const TASK_TITLES = {
  "text-to-image": "Pictures from text",
  img2img: "Redo a picture from a prompt",
  "controlnet-canny": "New look, same outline",
  anime: "Anime",
  stylize: "Painting styles",
  restyle: "Any picture as the style",
  "remove-background": "Background removal",
  "id-photo": "ID photos",
};
const INPUT_TEXT = {
  image: { title: "Your pictures", hint: "JPEG, PNG, WebP, GIF, BMP or TIFF. Add several at once to run a batch.", multiple: true },
  style_image: { title: "Style picture", hint: "Its colours and brushwork are copied onto your pictures.", multiple: false },
};
const STATUS_TEXT = { pending: "waiting", running: "working…", ok: "done", failed: "failed", canceled: "canceled" };
const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
// Params the prompt box shows (above the generated settings form); the rest go in the form.
const PROMPT_PARAMS = new Set(["prompt", "negative_prompt", "seed", "n"]);
const SEED_RANGE = 2 ** 32;

const $ = (id) => document.getElementById(id);
const state = {
  styles: [],
  style: null,
  form: null,
  files: {}, // input field -> [File]
  results: [], // single mode: one per variant (or per seed) asked for
  shown: 0, // the result on screen
  urls: [], // object URLs of the current result, revoked when replaced
  running: false,
  cancel: null,
};

// ---- messages ---------------------------------------------------------------------------------

function showError(err) {
  const box = $("message");
  const details = el("details", {}, el("summary", { text: "Details for support" }), el("span", { text: supportLine(err) }));
  box.replaceChildren(el("p", { text: explain(err) }), details);
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
  $("message").replaceChildren();
}

// ---- styles -----------------------------------------------------------------------------------

function renderStyles() {
  const groups = new Map();
  for (const style of state.styles) {
    if (!groups.has(style.task)) groups.set(style.task, []);
    groups.get(style.task).push(style);
  }
  const sections = [...groups].map(([task, styles]) => el("section", { class: "group", "data-task": task },
    el("h3", { text: TASK_TITLES[task] || labelOf(task) }),
    el("div", { class: "cards" }, ...styles.map(styleCard))));
  $("style-groups").replaceChildren(...sections);
}

function styleCard(style) {
  const img = el("img", { src: `/v1/styles/${encodeURIComponent(style.name)}/preview`, alt: "", width: 160, height: 160,
    decoding: "async" });  // eager: ~30 small cached previews; lazy ones below the fold never load in a short list
  img.addEventListener("error", () => img.replaceWith(el("span", { class: "no-preview", text: style.name.charAt(0) })));
  const thumb = el("span", { class: `thumb${style.task === "remove-background" ? " checker" : ""}` }, img);
  const variants = style.variants.length > 1
    ? el("span", { class: "badge", text: `${style.variants.length} variants` }) : null;
  const card = el("button", { type: "button", class: "card", "data-style": style.name, title: style.description,
    "aria-pressed": "false" }, thumb, el("span", { class: "name", text: style.name }), variants);
  card.addEventListener("click", () => selectStyle(style.name));
  return card;
}

function filterStyles() {
  const query = $("style-filter").value.trim().toLowerCase();
  for (const card of document.querySelectorAll(".card")) {
    const style = state.styles.find((s) => s.name === card.dataset.style);
    card.hidden = query !== "" && !`${style.name} ${style.description}`.toLowerCase().includes(query);
  }
  for (const group of document.querySelectorAll(".group")) {
    group.hidden = [...group.querySelectorAll(".card")].every((c) => c.hidden);
  }
}

function selectStyle(name) {
  const style = state.styles.find((s) => s.name === name);
  if (!style) return;
  state.style = style;
  for (const card of document.querySelectorAll(".card")) {
    card.setAttribute("aria-pressed", String(card.dataset.style === name));
  }
  $("chosen-style").replaceChildren(el("strong", { text: style.name }), document.createTextNode(`: ${style.description}`));
  $("chosen-style").classList.remove("muted");
  renderInputs(style.inputs);
  renderPrompt(style);
  state.form = buildForm($("params"), style.params.filter((p) => !PROMPT_PARAMS.has(p.name)));
  renderVariants();
  $("settings").hidden = false;
  clearMessage();
  updateRun();
  if (window.matchMedia("(max-width: 899px)").matches) $("work").scrollIntoView({ behavior: "smooth" });
}

function renderVariants() {
  const { variants } = state.style;
  $("variant-row").hidden = variants.length < 2;
  const total = variants.reduce((n, v) => n + v.weight, 0) || 1;
  const auto = variants.map((v) => `${v.name} ${Math.round((100 * v.weight) / total)}%`).join(", ");
  const options = [el("option", { value: "", text: `Automatic (${auto})` })];
  for (const v of variants) options.push(el("option", { value: v.name, text: `Variant ${v.name}` }));
  options.push(el("option", { value: "*", text: "All variants, to compare (one picture)" }));
  $("variant").replaceChildren(...options);
}

// ---- prompts (Stable Diffusion styles) ---------------------------------------------------------

const paramOf = (style, name) => style.params.find((p) => p.name === name);
const takesPrompt = (style) => Boolean(style && paramOf(style, "prompt"));
/** A style that makes pictures from text alone: no picture to add, a prompt (or a list of them). */
const fromText = (style) => takesPrompt(style) && style.inputs.length === 0;

function renderPrompt(style) {
  const box = $("prompt-box");
  box.hidden = !takesPrompt(style);
  $("work-title").lastChild.textContent = fromText(style) ? " Describe the picture" : " Add pictures";
  if (box.hidden) return;
  const prompt = paramOf(style, "prompt");
  $("prompt").value = "";
  $("prompt").placeholder = prompt.default || "";
  $("prompt-hint").textContent = fromText(style)
    ? "What the picture shows. Empty: the example above. Several lines: one picture per line, run as a batch."
    : "What the picture should become. Empty: the example above.";
  const negative = paramOf(style, "negative_prompt");
  $("negative-row").hidden = !negative;
  $("negative-prompt").value = negative?.default || "";
  const seed = paramOf(style, "seed");
  $("seed-row").hidden = !seed;
  $("seed").value = seed ? String(seed.default ?? 0) : "";
  const count = paramOf(style, "n");
  $("count-row").hidden = !(count && fromText(style) && count.maximum > 1);
  $("count").max = String(count?.maximum ?? 1);
  $("count").value = "1";
}

function newSeed() {
  $("seed").value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
}

function promptLines() {
  return $("prompt").value.split("\n").map((l) => l.trim()).filter(Boolean);
}

/** The prompt box as form fields: the prompt (one line), negative prompt and seed. */
function promptFields() {
  const style = state.style;
  if (!takesPrompt(style)) return {};
  const out = {};
  const lines = promptLines();
  if (lines.length === 1) out.prompt = lines[0];
  const negative = paramOf(style, "negative_prompt");
  if (negative && $("negative-prompt").value.trim() !== (negative.default || "")) out.negative_prompt = $("negative-prompt").value.trim();
  if (paramOf(style, "seed") && $("seed").value !== "") out.seed = $("seed").value;
  return out;
}

function pictureCount() {
  if ($("count-row").hidden) return 1;
  const n = Number.parseInt($("count").value, 10);
  return Number.isFinite(n) ? Math.min(Math.max(n, 1), Number($("count").max)) : 1;
}

// ---- inputs -----------------------------------------------------------------------------------

function renderInputs(fields) {
  const zones = fields.map((field) => {
    const text = INPUT_TEXT[field] || { title: labelOf(field), hint: "", multiple: false };
    const input = el("input", { type: "file", id: `file-${field}`, class: "visually-hidden", accept: "image/*,.tif,.tiff",
      multiple: text.multiple, "data-field": field });
    const chosen = el("div", { class: "chosen", id: `chosen-${field}` });
    const zone = el("div", { class: "drop", "data-field": field },
      input,
      el("label", { for: input.id },
        el("strong", { text: text.title }),
        el("span", { text: text.multiple ? "Drop pictures here, or " : "Drop a picture here, or " },
          el("span", { class: "link", text: text.multiple ? "choose files" : "choose a file" })),
        text.hint ? el("small", { text: text.hint }) : null),
      chosen);
    input.addEventListener("change", () => setFiles(field, [...input.files], text.multiple));
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      setFiles(field, [...e.dataTransfer.files], text.multiple);
    });
    return zone;
  });
  $("inputs").replaceChildren(...zones);
  for (const field of fields) renderChosen(field);
}

function setFiles(field, files, multiple) {
  if (files.length === 0) return;
  state.files[field] = multiple ? files : files.slice(0, 1);
  renderChosen(field);
  clearMessage();
  updateRun();
}

function renderChosen(field) {
  const box = $(`chosen-${field}`);
  if (!box) return;
  const files = state.files[field] || [];
  if (files.length === 0) {
    box.replaceChildren();
    return;
  }
  const names = files.length === 1 ? files[0].name : `${files.length} pictures`;
  const clear = el("button", { type: "button", class: "link-button", text: "Remove" });
  clear.addEventListener("click", () => { state.files[field] = []; renderChosen(field); updateRun(); });
  const thumbs = files.slice(0, 12).map((file) => {
    const img = el("img", { alt: "", src: URL.createObjectURL(file) });
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
    img.addEventListener("error", () => img.replaceWith(el("span", { class: "no-thumb", text: "?" })), { once: true });
    return img;
  });
  box.replaceChildren(el("div", { class: "thumbs" }, ...thumbs), el("p", {}, el("span", { text: names }), clear));
}

function updateRun() {
  const style = state.style;
  const images = state.files.image || [];
  const ready = style && style.inputs.every((f) => (state.files[f] || []).length > 0);
  $("run").disabled = !ready || state.running;
  let note = "";
  if (fromText(style)) {
    const lines = promptLines().length;
    const n = pictureCount();
    $("run").textContent = lines > 1 ? `Make ${lines} pictures` : n > 1 ? `Make ${n} pictures` : "Make the picture";
    if (lines > 1) note = "One picture per line, run as a batch.";
    $("run-note").textContent = note;
    return;
  }
  $("run").textContent = images.length > 1 ? `Apply to ${images.length} pictures` : "Apply the style";
  if (!style) note = "Pick a style first.";
  else if (!ready) note = `Add ${style.inputs.filter((f) => !(state.files[f] || []).length).map((f) => (INPUT_TEXT[f]?.title || labelOf(f)).toLowerCase()).join(" and ")}.`;
  else if (images.length > 1) note = "They will run as a batch.";
  $("run-note").textContent = note;
}

// ---- one picture ------------------------------------------------------------------------------

function stemOf(file) {
  return file.name.replace(/\.[^.]*$/, "") || "image";
}

function formatBytes(n) {
  return n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} KB`;
}

/** What one click asks for: a request per variant compared, or per picture wanted (seed, seed+1, ...). */
function asks(fields) {
  const style = state.style;
  const chosen = $("variant").value;
  const n = pictureCount();
  if (n > 1) {
    const seed = Number.parseInt(fields.seed ?? "0", 10) || 0;
    return Array.from({ length: n }, (_, i) => ({ ...fields, seed: String((seed + i) % SEED_RANGE), ...(chosen && chosen !== "*" ? { variant: chosen } : {}) }));
  }
  const variants = style.variants.length > 1 && chosen === "*" ? style.variants.map((v) => v.name) : [chosen || null];
  return variants.map((variant) => (variant ? { ...fields, variant } : fields));
}

async function runSingle() {
  const style = state.style;
  const text = fromText(style);
  const file = text ? null : state.files.image[0];
  const files = Object.fromEntries(style.inputs.map((f) => [f, state.files[f][0]]));
  const fields = { ...state.form.values(), ...promptFields() };
  const stem = text ? slugOf(fields.prompt || paramOf(style, "prompt")?.default || "") : stemOf(file);

  $("batch").hidden = true;
  state.urls.forEach((u) => URL.revokeObjectURL(u));
  state.urls = [];
  state.results = [];
  // in parallel: the service batches them (a seeded style's pictures come from one pipeline call)
  const results = await Promise.all(asks(fields).map((f) => applyStyle(style.name, files, f)));
  for (const result of results) {
    result.url = URL.createObjectURL(result.blob);
    const tag = result.seed !== null ? `-seed${result.seed}` : "";
    result.fileName = `${stem}-${style.name}${result.variant !== "default" ? `-${result.variant}` : ""}${tag}.${EXTENSIONS[result.contentType.split(";")[0]] || "bin"}`;
    state.urls.push(result.url);
    state.results.push(result);
  }
  document.querySelector(".view-toggle").hidden = !file; // nothing to compare a picture made from text with
  if (file) {
    const before = URL.createObjectURL(file);
    state.urls.push(before);
    $("before-img").src = before;
  } else {
    $("before-img").removeAttribute("src");
    $("compare").dataset.before = "missing"; // nothing to compare with: the picture alone
  }
  renderTabs();
  showResult(0);
  $("single").hidden = false;
  $("single").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function renderTabs() {
  const tabs = $("variant-tabs");
  tabs.hidden = state.results.length < 2;
  tabs.replaceChildren(...state.results.map((r, i) => {
    const bySeed = new Set(state.results.map((x) => x.variant)).size === 1 && r.seed !== null;
    const tab = el("button", { type: "button", role: "tab", "aria-selected": String(i === 0),
      text: bySeed ? `Seed ${r.seed}` : `Variant ${r.variant}` });
    tab.addEventListener("click", () => {
      tabs.querySelectorAll("button").forEach((b, j) => b.setAttribute("aria-selected", String(i === j)));
      showResult(i);
    });
    return tab;
  }));
}

function showResult(i) {
  const r = state.results[i];
  state.shown = i;
  $("result-seed-text").hidden = r.seed === null;
  $("result-seed").textContent = r.seed ?? "";
  $("same-again").hidden = r.seed === null;
  $("result-flag").hidden = !r.nsfw;
  const img = $("result-img");
  img.src = r.url;
  if (r.width && r.height) $("compare").style.setProperty("--ratio", String(r.width / r.height));
  fitCompare();
  $("result-variant").textContent = r.variant;
  const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;
  $("result-timing").textContent = r.serverMs !== null
    ? `· ${seconds(r.serverMs)} on the service (${seconds(r.roundTripMs)} with the upload)`
    : `· ${seconds(r.roundTripMs)}`;
  const kind = (EXTENSIONS[r.contentType.split(";")[0]] || "").toUpperCase();
  $("result-size").textContent = `· ${r.width} × ${r.height} ${kind}, ${formatBytes(r.blob.size)}`;
  const link = $("download");
  link.href = r.url;
  link.download = r.fileName;
}

/** Shows the pair no bigger than the larger of the two pictures (a 256 px result is not blown up to the page). */
function fitCompare() {
  const before = $("before-img");
  const widest = Math.max(state.results.length ? state.results[0].width || 0 : 0, before.naturalWidth || 0);
  if (widest > 0) $("compare").style.setProperty("--natural", `${widest}px`);
}

function setView(view) {
  $("compare").dataset.view = view;
  for (const b of document.querySelectorAll(".view-toggle button")) b.setAttribute("aria-pressed", String(b.dataset.view === view));
}

// ---- many pictures ----------------------------------------------------------------------------

function batchRows(total, names) {
  const rows = names.map((name) => el("li", { class: "item", "data-status": "pending" },
    el("span", { class: "item-name", text: name }),
    el("span", { class: "pill", text: STATUS_TEXT.pending }),
    el("span", { class: "item-error" })));
  $("batch-items").replaceChildren(...rows);
  $("batch-progress").max = total;
  return rows;
}

function renderBatch(rows, job) {
  const total = job.total ?? rows.length;
  $("batch-progress").max = total || 1;
  $("batch-progress").value = job.done ?? 0;
  $("batch-count").textContent = `${job.done ?? 0}/${total}`;
  const parts = [`${job.succeeded ?? 0} done`];
  if (job.failed) parts.push(`${job.failed} failed`);
  $("batch-summary").textContent = parts.join(", ");
  (job.items || []).forEach((item, i) => {
    const row = rows[i];
    if (!row) return;
    row.dataset.status = item.status;
    if (!row.dataset.keepName) row.querySelector(".item-name").textContent = item.name || row.querySelector(".item-name").textContent;
    row.querySelector(".pill").textContent = STATUS_TEXT[item.status] || item.status;
    row.querySelector(".item-error").textContent = item.error ? explain(item.error) : "";
    if (item.url && !row.querySelector("a.item-result")) {
      const link = el("a", { class: "item-result checker", href: item.url, download: item.fileName || "", title: "Download this result" },
        el("img", { src: item.url, alt: `Result for ${item.name}` }));
      row.prepend(link);
      row.classList.add("with-result");
    }
  });
}

async function runMany({ prompts = null } = {}) {
  const style = state.style;
  const images = prompts ? [] : state.files.image;
  const names = prompts || images.map((f) => f.name);
  const extraFiles = Object.fromEntries(style.inputs.filter((f) => f !== "image").map((f) => [f, state.files[f][0]]));
  const fields = { ...state.form.values(), ...promptFields() }; // for a prompt list, seed is the job seed
  const chosen = $("variant").value;
  if (chosen && chosen !== "*") fields.variant = chosen;

  $("single").hidden = true;
  delete $("batch").dataset.mode;
  $("batch").hidden = false;
  $("batch-title").textContent = `Batch: ${names.length} ${prompts ? "prompts" : "pictures"} in ${style.name}`;
  $("batch-mode").textContent = "Starting…";
  $("batch-download").hidden = true;
  $("batch-cancel").hidden = false;
  $("batch-cancel").disabled = false;
  const rows = batchRows(names.length, names);
  if (prompts) rows.forEach((row) => { row.dataset.keepName = "true"; }); // the prompt, not "prompts.txt:3"
  renderBatch(rows, { total: names.length, done: 0, succeeded: 0, failed: 0, items: [] });
  state.cancel = new AbortController();
  $("batch").scrollIntoView({ behavior: "smooth", block: "nearest" });

  const outcome = await runBatch({
    style: style.name, images, prompts, extraFiles, fields, cancel: state.cancel.signal,
    onUpdate: (job) => renderBatch(rows, job),
    onMode: (mode, job) => {
      $("batch").dataset.mode = mode;
      $("batch-mode").textContent = mode === "job"
        ? `Running as one job on the service (job ${job.id}); progress is live.`
        : "This service has no jobs API, so this page sends the pictures itself, a few at a time, and zips the "
          + "results. Keep the page open until it is done.";
    },
  });
  $("batch-cancel").hidden = true;
  const done = outcome.state || {};
  if (done.status === "canceled") $("batch-summary").textContent += " · canceled";
  if (outcome.download) {
    const link = $("batch-download");
    link.href = outcome.download.href;
    link.download = outcome.download.name;
    link.textContent = done.failed ? `Download the ${done.succeeded} results (zip)` : "Download all (zip)";
    link.hidden = false;
  }
}

// ---- wiring -----------------------------------------------------------------------------------

async function run() {
  state.running = true;
  updateRun();
  clearMessage();
  $("run").setAttribute("aria-busy", "true");
  const images = state.files.image || [];
  const lines = promptLines();
  try {
    if (fromText(state.style) && lines.length > 1) await runMany({ prompts: lines });
    else if (!fromText(state.style) && images.length > 1) await runMany();
    else await runSingle();
  } catch (err) {
    $("single").hidden = true;
    if (!$("batch").dataset.mode) $("batch").hidden = true; // the batch never started (e.g. POST /v1/jobs refused it)
    showError(err);
  } finally {
    state.running = false;
    $("run").removeAttribute("aria-busy");
    updateRun();
  }
}

async function start() {
  $("run").addEventListener("click", run);
  $("params").addEventListener("submit", (e) => e.preventDefault());
  $("reset").addEventListener("click", () => state.form && state.form.reset());
  $("new-seed").addEventListener("click", newSeed);
  $("prompt").addEventListener("input", updateRun);
  $("count").addEventListener("input", updateRun);
  $("same-again").addEventListener("click", () => {
    // the shown picture's seed, alone: change the prompt or the steps and see what they do
    $("seed").value = state.results[state.shown]?.seed ?? $("seed").value;
    $("count").value = "1";
    run();
  });
  $("style-filter").addEventListener("input", filterStyles);
  $("divider").addEventListener("input", (e) => $("compare").style.setProperty("--pos", `${e.target.value}%`));
  for (const b of document.querySelectorAll(".view-toggle button")) b.addEventListener("click", () => setView(b.dataset.view));
  $("before-img").addEventListener("error", () => { $("compare").dataset.before = "missing"; });
  $("before-img").addEventListener("load", () => { delete $("compare").dataset.before; fitCompare(); });
  $("batch-cancel").addEventListener("click", () => {
    $("batch-cancel").disabled = true;
    state.cancel?.abort();
  });
  try {
    state.styles = await listStyles();
  } catch (err) {
    $("style-groups").replaceChildren();
    showError(err);
    return;
  }
  renderStyles();
  renderInputs(["image"]); // pictures may come before the style
  updateRun();
  document.body.dataset.ready = "true";
}

start();
