// Small DOM and formatting helpers shared by the pages.

// h("a", {href: "#/jobs", class: "x", onclick: fn}, "text", child) builds an element; null children are skipped.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...present(children));
  return el;
}

// Replaces an element's children, skipping null and false (parts a page shows only sometimes).
export function fill(el, ...children) {
  el.replaceChildren(...present(children));
  return el;
}

function present(children) {
  return children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);
}

// Screen readers hear outcomes (saved, submitted, cancelled) through one polite live region.
export function announce(text) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  // Set after a tick so that the same message twice is read twice.
  setTimeout(() => (region.textContent = text), 50);
}

export const FINISHED = new Set(["succeeded", "failed", "cancelled", "pruned"]);

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status}`, "data-testid": "job-status" }, status);
}

export function progressBar(progress, label) {
  const fraction = Math.max(0, Math.min(1, progress?.fraction ?? 0));
  return h("progress", { max: 1, value: fraction, "aria-label": label, title: `${(fraction * 100).toFixed(0)} %` });
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function jobDuration(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}

export function formatNumber(value) {
  if (value === null || value === undefined) return "";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(3);
  return value.toPrecision(4);
}

export function formatBest(best) {
  if (!best || best.value === null || best.value === undefined) return "";
  return `${best.metric} ${formatNumber(best.value)}`;
}

export function formatShape(shape) {
  return Array.isArray(shape) ? `[${shape.join(", ")}]` : "";
}

// The error list shared by the submit page and the predict form: each problem with its JSON path.
export function errorList(errors, testid) {
  return h(
    "ul",
    { class: "errors", "data-testid": testid },
    errors.map((e) => h("li", { "data-loc": e.loc || "" }, e.loc ? h("code", {}, e.loc) : null, e.loc ? ": " : "", e.msg)),
  );
}
