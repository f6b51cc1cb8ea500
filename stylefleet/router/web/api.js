// Talking to the stylefleet API, and turning its errors into sentences a person understands.

/** An API failure: `code` is the API's stable error code (or "network"), `message` its own text. */
export class ApiError extends Error {
  constructor({ status = 0, code = "network", message = "", retryAfterS = null, requestId = null } = {}) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
    this.requestId = requestId;
  }
}

const BY_STATUS = { 400: "bad_request", 404: "not_found", 413: "payload_too_large", 415: "unsupported_media_type",
  422: "invalid_params", 500: "internal_error", 502: "model_unavailable", 503: "model_unavailable",
  504: "timeout" };

/** Reads an error response; never throws, whatever the body is (JSON, HTML from a proxy, nothing). */
export async function errorFrom(response) {
  let code = BY_STATUS[response.status] || "http_error";
  let message = "";
  try {
    const body = await response.json();
    if (body && body.error && body.error.code) {
      code = String(body.error.code);
      message = String(body.error.message || "");
    }
  } catch {
    // not JSON: keep the code guessed from the status
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError({
    status: response.status, code, message,
    retryAfterS: Number.isFinite(retry) ? retry : null,
    requestId: response.headers.get("X-Request-Id"),
  });
}

/** "max_side" -> "Max side" */
export function labelOf(name) {
  const words = String(name).replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

const SENTENCES = {
  invalid_image: () => "This file could not be read as a picture. It may be damaged, cut short, not a picture at all, "
    + "or smaller than 32 pixels on a side. Try another file.",
  unsupported_media_type: () => "This kind of file is not supported. Use a JPEG, PNG, WebP, GIF, BMP or TIFF picture.",
  payload_too_large: () => "This picture is too big for the service. Try a smaller file, or make the picture smaller first.",
  invalid_params: (err) => {
    const m = /^'?([A-Za-z_][\w]*)'?\s*:\s*(.*)$/.exec(err.message || "");
    if (!m) return "One of the settings was not accepted. Check the settings and try again.";
    const detail = m[2] ? ` (${m[2].replace(/\.$/, "")})` : "";
    return `The setting “${labelOf(m[1])}” was not accepted${detail}. Change it and try again.`;
  },
  unknown_style: () => "This style is not offered by the service any more. Reload the page to see the current styles.",
  overloaded: (err) => {
    const s = err.retryAfterS || 1;
    return `The service is busy right now. Please try again in ${s} second${s === 1 ? "" : "s"}.`;
  },
  model_unavailable: () => "The model behind this style is not available at the moment. Please try again in a minute.",
  internal_error: () => "Something went wrong while processing this picture. Try another picture, or try again later.",
  bad_request: () => "The upload did not arrive in one piece. Please try again.",
  not_found: () => "The service could not find what this page asked for. Reload the page and try again.",
  timeout: () => "The service took too long to answer. Try a smaller picture, or try again later.",
  network: () => "This page could not reach the service. Check your connection and try again.",
  canceled: () => "Canceled.",
};

/** One plain sentence for any error (an ApiError, a job item's {code, message}, or anything thrown). */
export function explain(err) {
  const e = err instanceof ApiError ? err : new ApiError({ code: err && err.code ? err.code : "internal_error",
    message: err && err.message ? err.message : "" });
  const sentence = SENTENCES[e.code];
  if (sentence) return sentence(e);
  if (e.status >= 400 && e.status < 500) return "The service did not accept this request. Check the picture and the settings.";
  return "The service had a problem with this request. Please try again later.";
}

/** The line support staff ask for: error code and request id, no JSON. */
export function supportLine(err) {
  const parts = [`error code: ${err.code || "unknown"}`];
  if (err.status) parts.push(`HTTP ${err.status}`);
  if (err.requestId) parts.push(`request id: ${err.requestId}`);
  return parts.join(" · ");
}

async function send(url, init) {
  try {
    return await fetch(url, init);
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw new ApiError({ code: "canceled" });
    throw new ApiError({ code: "network", message: String(exc) });
  }
}

export async function listStyles() {
  const response = await send("/v1/styles", { headers: { Accept: "application/json" } });
  if (!response.ok) throw await errorFrom(response);
  return (await response.json()).styles;
}

function formOf(files, fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  for (const [name, list] of Object.entries(files)) {
    for (const file of [].concat(list)) form.append(name, file, file.name);
  }
  return form;
}

/**
 * POST /v1/styles/{style}: one picture (plus e.g. style_image), or none for a style that makes
 * pictures from text -> the result and how it was made. `files` maps field name -> File (or list
 * of Files for jobs).
 */
export async function applyStyle(style, files, fields, { signal } = {}) {
  const started = performance.now();
  const response = await send(`/v1/styles/${encodeURIComponent(style)}`,
    { method: "POST", body: formOf(files, fields), signal });
  if (!response.ok) throw await errorFrom(response);
  const blob = await response.blob();
  const timing = /dur=([\d.]+)/.exec(response.headers.get("Server-Timing") || "");
  const size = /^(\d+)x(\d+)$/.exec(response.headers.get("X-Stylefleet-Size") || "");
  return {
    blob,
    contentType: response.headers.get("Content-Type") || blob.type,
    variant: response.headers.get("X-Stylefleet-Variant") || "default",
    seed: response.headers.get("X-Stylefleet-Seed"), // seeded styles (Stable Diffusion) only
    nsfw: response.headers.get("X-Stylefleet-Nsfw") === "true", // the safety checker blacked it out
    requestId: response.headers.get("X-Request-Id"),
    width: size ? Number(size[1]) : null,
    height: size ? Number(size[2]) : null,
    serverMs: timing ? Number(timing[1]) : null,
    roundTripMs: performance.now() - started,
  };
}

/**
 * POST /v1/jobs. Resolves to the job ({id, status, total, urls}) or to null when this service has
 * no jobs API (404/405 for the route itself), in which case the caller sends the pictures itself.
 */
export async function createJob(files, fields) {
  const response = await send("/v1/jobs", { method: "POST", body: formOf(files, fields) });
  if (response.status === 202 || response.status === 201 || response.status === 200) return response.json();
  const err = await errorFrom(response);
  if ((response.status === 404 || response.status === 405) && ["not_found", "method_not_allowed", "http_error"].includes(err.code)) {
    return null;
  }
  throw err;
}

export async function getJson(url) {
  const response = await send(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

let retryable = null;

/**
 * The error codes worth retrying, as the service's error classes say (GET /v1/errors): a
 * Set of codes. Read once per page; when it cannot be read, nothing is retried (and it is asked
 * again next time).
 */
export function retryableCodes() {
  retryable ??= getJson("/v1/errors")
    .then((body) => new Set(body.errors.filter((e) => e.retryable).map((e) => e.code)))
    .catch(() => {
      retryable = null;
      return new Set();
    });
  return retryable;
}

export async function deleteUrl(url) {
  const response = await send(url, { method: "DELETE" });
  if (!response.ok && response.status !== 404) throw await errorFrom(response);
}
