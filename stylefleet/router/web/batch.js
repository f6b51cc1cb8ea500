// Many pictures at once: a job on the service (POST /v1/jobs, live progress from its event
// stream, the result as one zip), or, on a service without the jobs API, the pictures sent one
// by one from this page with bounded concurrency and zipped here. A style that makes pictures
// from text takes a list of prompts instead (a `prompts` file, one per line, for the job).
//
// Progress is reported through onUpdate({status, total, done, succeeded, failed, items}), items
// being [{name, status: pending|running|ok|failed|canceled, error}], the shape of GET /v1/jobs/{id}.

import { ApiError, applyStyle, createJob, deleteUrl, getJson, retryableCodes } from "./api.js";
import { makeZip } from "./zip.js";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const CONCURRENCY = 3; // pictures in flight from this page: enough to fill a batch, not to flood the queue
const RETRIES = 3; // of a picture the service answers with a retryable error (GET /v1/errors)
const POLL_MS = 1000;

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/**
 * Runs the batch; resolves to {mode: "job"|"page", state, download: {href, name} | null}.
 * `cancel` is an AbortSignal: aborting it cancels the job (or stops sending pictures).
 */
export async function runBatch({ style, images = [], prompts = null, extraFiles, fields, onUpdate, onMode, cancel }) {
  const inputs = prompts
    ? { prompts: new File([`${prompts.join("\n")}\n`], "prompts.txt", { type: "text/plain" }) }
    : { images };
  const job = await createJob({ ...inputs, ...extraFiles }, { style, ...fields });
  if (job === null) {
    onMode("page", null);
    const units = prompts ? promptUnits(prompts, extraFiles, fields) : imageUnits(images, extraFiles, fields);
    return sendOneByOne({ style, units, onUpdate, cancel });
  }
  onMode("job", job);
  cancel.addEventListener("abort", () => { deleteUrl(job.urls.self).catch(() => {}); }, { once: true });
  const state = await follow(job, onUpdate);
  const download = state.succeeded > 0
    ? { href: job.urls.result, name: `stylefleet-${style}-${job.id}.zip` }
    : null;
  return { mode: "job", state, download };
}

/** Live progress from the job's event stream; polls GET /v1/jobs/{id} if the stream is unavailable. */
function follow(job, onUpdate) {
  return new Promise((resolve) => {
    let settled = false;
    let last = null;
    const finish = async () => {
      if (settled) return;
      settled = true;
      source.close();
      try {
        last = await getJson(job.urls.self);
        onUpdate(last);
      } catch {
        // keep the last progress event
      }
      resolve(last);
    };
    const poll = async () => {
      while (!settled) {
        try {
          last = await getJson(job.urls.self);
          onUpdate(last);
          if (TERMINAL.has(last.status)) return finish();
        } catch {
          // transient: try again at the next tick
        }
        await sleep(POLL_MS);
      }
    };
    const source = new EventSource(job.urls.events);
    source.addEventListener("progress", (event) => {
      last = JSON.parse(event.data);
      onUpdate(last);
      if (TERMINAL.has(last.status)) finish();
    });
    source.addEventListener("end", finish);
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED && !settled) poll();
    });
  });
}

function counts(items) {
  const succeeded = items.filter((i) => i.status === "ok").length;
  const failed = items.filter((i) => i.status === "failed").length;
  return { done: succeeded + failed, succeeded, failed };
}

const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };

/** What the page sends for each item when it sends them itself: {name, stem, files, fields}. */
function imageUnits(images, extraFiles, fields) {
  return images.map((file) => ({ name: file.name, stem: file.name.replace(/\.[^.]*$/, "") || "image",
    files: { image: file, ...extraFiles }, fields }));
}

/** As the service numbers a prompt list: seed + index for lines without their own (the job seed). */
function promptUnits(prompts, extraFiles, fields) {
  const seed = Number.parseInt(fields.seed ?? "", 10);
  return prompts.map((prompt, i) => ({
    name: prompt, stem: `${String(i + 1).padStart(4, "0")}-${slugOf(prompt)}`, files: { ...extraFiles },
    fields: { ...fields, prompt, ...(Number.isFinite(seed) ? { seed: String((seed + i) % 2 ** 32) } : {}) },
  }));
}

export function slugOf(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 48).replace(/-+$/, "") || "image";
}

function zipName(stem, style, contentType, taken) {
  const ext = EXTENSIONS[(contentType || "").split(";")[0]] || "bin";
  let name = `${stem}-${style}.${ext}`;
  for (let n = 2; taken.has(name); n++) name = `${stem}-${style}-${n}.${ext}`;
  taken.add(name);
  return name;
}

/** Sends again, after the service's Retry-After (or a second), while its error is retryable. */
async function withRetry(send, retryable, cancel) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await send();
    } catch (err) {
      if (!(err instanceof ApiError) || !retryable.has(err.code) || attempt >= RETRIES || cancel.aborted) throw err;
      await sleep(1000 * (err.retryAfterS || 1), cancel);
    }
  }
}

async function sendOneByOne({ style, units, onUpdate, cancel }) {
  const items = units.map((unit) => ({ name: unit.name, status: "pending", error: null }));
  const results = new Array(units.length);
  const taken = new Set(); // file names already used in the zip
  const retryable = await retryableCodes();
  const state = () => ({ status: "running", total: units.length, ...counts(items), items });
  onUpdate(state());
  let next = 0;
  const worker = async () => {
    while (next < units.length && !cancel.aborted) {
      const i = next++;
      items[i].status = "running";
      onUpdate(state());
      try {
        results[i] = await withRetry(() => applyStyle(style, units[i].files, units[i].fields), retryable, cancel);
        items[i].url = URL.createObjectURL(results[i].blob);
        items[i].fileName = zipName(units[i].stem, style, results[i].contentType, taken);
        items[i].status = "ok";
      } catch (err) {
        items[i].status = "failed";
        items[i].error = err;
      }
      onUpdate(state());
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, units.length) }, worker));
  for (const item of items) if (item.status === "pending") item.status = "canceled";

  const final = state();
  final.status = cancel.aborted ? "canceled" : final.succeeded > 0 ? "succeeded" : "failed";
  onUpdate(final);
  let download = null;
  if (final.succeeded > 0) {
    const entries = results.flatMap((r, i) => (r ? [{ name: items[i].fileName, blob: r.blob }] : []));
    download = { href: URL.createObjectURL(await makeZip(entries)), name: `stylefleet-${style}.zip` };
  }
  return { mode: "page", state: final, download };
}
