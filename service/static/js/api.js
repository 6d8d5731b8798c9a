// The dashboard's only door to the server: the stored API key, JSON requests, downloads and the metrics
// event stream. Every request goes to the same HTTP API the SDK uses, relative to the page.

const KEY_STORAGE = "trainserve.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.type = body?.type || "http_error";
    this.errors = Array.isArray(body?.errors) ? body.errors : [];
  }
}

let onUnauthorized = () => {};

export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export function getKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setKey(key) {
  localStorage.setItem(KEY_STORAGE, key.trim());
}

export function clearKey() {
  localStorage.removeItem(KEY_STORAGE);
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${getKey()}`, ...extra };
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // A proxy's HTML error page: keep the status alone.
  }
  if (response.status === 401) onUnauthorized();
  return new ApiError(response.status, body);
}

export async function request(method, path, { body, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  return response.json();
}

export const api = {
  listJobs: (params, signal) => request("GET", `jobs?${new URLSearchParams(params)}`, { signal }),
  getJob: (id, signal) => request("GET", `jobs/${encodeURIComponent(id)}`, { signal }),
  cancelJob: (id) => request("POST", `jobs/${encodeURIComponent(id)}/cancel`),
  validate: (text, signal) => request("POST", "jobs/validate", { body: text, signal }),
  submit: (text) => request("POST", "jobs", { body: text }),
  metrics: (id, params, signal) =>
    request("GET", `jobs/${encodeURIComponent(id)}/metrics?${new URLSearchParams(params)}`, { signal }),
  checkpoints: (id, signal) => request("GET", `jobs/${encodeURIComponent(id)}/checkpoints`, { signal }),
  predict: (payload) => request("POST", "predict", { body: payload }),
  compare: (params, signal) => request("GET", `jobs/compare?${new URLSearchParams(params)}`, { signal }),
  listSweeps: (params, signal) => request("GET", `sweeps?${new URLSearchParams(params)}`, { signal }),
  getSweep: (id, signal) => request("GET", `sweeps/${encodeURIComponent(id)}`, { signal }),
  listModels: (params, signal) => request("GET", `models?${new URLSearchParams(params)}`, { signal }),
  getModel: (name, signal) => request("GET", `models/${encodeURIComponent(name)}`, { signal }),
  registerModel: (body) => request("POST", "models", { body }),
  setAlias: (name, alias, version) =>
    request("PUT", `models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`, { body: { version } }),
  deleteAlias: (name, alias) =>
    request("DELETE", `models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`),
  signature: (id, ckpt, signal) =>
    request("GET", `jobs/${encodeURIComponent(id)}/checkpoints/${encodeURIComponent(ckpt)}/signature`, { signal }),
};

// The file name the server gives in Content-Disposition, if any.
function attachmentName(response) {
  const match = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : "";
}

// An <a download> cannot carry the Authorization header, so the file is fetched here and handed to the
// browser as a blob URL. Without a filename, the server's (Content-Disposition) is used.
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await errorFrom(response);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename || attachmentName(response) || "download";
  document.body.append(link);
  link.click();
  link.remove();
  // Revoke later: revoking at once can cancel the download in some browsers.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function parseData(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// EventSource cannot send headers, so the server-sent events are read from fetch()'s body stream and
// parsed here. onEvent(name, data) gets each event with its JSON data parsed; resolves when the server
// closes the stream.
export async function streamEvents(path, { signal, onEvent }) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw await errorFrom(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    // A lone \r at the end may be the first half of \r\n: keep it for the next chunk.
    const lines = buffer.split(/\r\n|\n|\r(?!$)/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) onEvent(event, parseData(data.join("\n")));
        event = "message";
        data = [];
      } else if (line.startsWith(":")) {
        continue; // keep-alive comment
      } else {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}
