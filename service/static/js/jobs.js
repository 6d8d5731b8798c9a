// The jobs page (#/jobs): the tenant's jobs, newest first, filtered by status and refreshed every 2 s; jobs
// picked with their checkboxes open side by side on the compare page.

import { api } from "./api.js";
import { formatBest, formatDuration, formatTime, h, jobDuration, progressBar, statusBadge } from "./ui.js";

const POLL_MS = 2000;
const PAGE_SIZE = 50;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "pruned"];
const FILTER_STORAGE = "trainserve.jobsFilter";

export function renderJobs(main) {
  let timer = null;
  let stopped = false;
  let controller = new AbortController();
  let firstPage = [];
  let older = []; // pages loaded with "Load older jobs"; the poll refreshes only the first page
  let nextCursor = null;
  const rows = new Map();
  const picker = comparePicker();

  const filter = h(
    "select",
    { id: "status-filter", "data-testid": "status-filter" },
    h("option", { value: "" }, "all"),
    STATUSES.map((s) => h("option", { value: s }, s)),
  );
  filter.value = sessionStorage.getItem(FILTER_STORAGE) || "";
  const body = h("tbody", { "data-testid": "jobs-rows" });
  const message = h("p", { class: "muted", role: "status" });
  const more = h("button", { type: "button", class: "secondary", hidden: true, "data-testid": "jobs-more" }, "Load older jobs");

  main.append(
    h(
      "section",
      {},
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, "Jobs"),
        h(
          "div",
          { class: "row" },
          h("label", { for: "status-filter" }, "Status"),
          filter,
          picker.button,
          h("a", { class: "button", href: "#/submit" }, "Submit a job"),
        ),
      ),
      h(
        "table",
        { class: "jobs", "data-testid": "jobs-table" },
        h("caption", { class: "visually-hidden" }, "Jobs, newest first"),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Compare")),
            ["Status", "Progress", "Name", "Created"].map((t) => h("th", { scope: "col" }, t)),
            ["Duration", "Best"].map((t) => h("th", { scope: "col", class: "num" }, t)),
          ),
        ),
        body,
      ),
      message,
      more,
    ),
  );

  function params(cursor) {
    const p = { limit: String(PAGE_SIZE) };
    if (filter.value) p.status = filter.value;
    if (cursor) p.cursor = cursor;
    return p;
  }

  function draw() {
    const ids = new Set(firstPage.map((j) => j.id));
    const jobs = [...firstPage, ...older.filter((j) => !ids.has(j.id))];
    const seen = new Set();
    jobs.forEach((job, i) => {
      let entry = rows.get(job.id);
      if (!entry) rows.set(job.id, (entry = makeRow(job.id, picker)));
      updateRow(entry, job);
      seen.add(job.id);
      if (body.children[i] !== entry.tr) body.insertBefore(entry.tr, body.children[i] || null);
    });
    for (const [id, entry] of rows) {
      if (!seen.has(id)) {
        entry.tr.remove();
        rows.delete(id);
      }
    }
    message.textContent = jobs.length ? "" : filter.value ? `No ${filter.value} jobs.` : "No jobs yet.";
    more.hidden = !nextCursor;
  }

  async function poll() {
    try {
      const page = await api.listJobs(params(), controller.signal);
      firstPage = page.items;
      if (!older.length) nextCursor = page.next_cursor;
      draw();
    } catch (err) {
      if (err.name === "AbortError" || stopped) return;
      message.textContent = `Could not load jobs: ${err.message}`;
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  function restart() {
    clearTimeout(timer);
    controller.abort();
    controller = new AbortController();
    older = [];
    nextCursor = null;
    poll();
  }

  filter.addEventListener("change", () => {
    sessionStorage.setItem(FILTER_STORAGE, filter.value);
    restart();
  });
  more.addEventListener("click", async () => {
    try {
      const page = await api.listJobs(params(nextCursor), controller.signal);
      older = [...older, ...page.items];
      nextCursor = page.next_cursor;
      draw();
    } catch (err) {
      if (err.name !== "AbortError") message.textContent = `Could not load older jobs: ${err.message}`;
    }
  });

  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    controller.abort();
  };
}

// The jobs picked for comparison, in the order picked, and the button that opens #/compare?ids=...
function comparePicker() {
  const picked = [];
  const button = h("button", { type: "button", class: "secondary", disabled: true, "data-testid": "compare-jobs" }, "Compare");
  const refresh = () => {
    button.disabled = picked.length < 2;
    button.textContent = picked.length ? `Compare (${picked.length})` : "Compare";
  };
  button.addEventListener("click", () => {
    location.hash = `#/compare?ids=${picked.map(encodeURIComponent).join(",")}`;
  });
  const toggle = (id, on) => {
    const i = picked.indexOf(id);
    if (on && i < 0) picked.push(id);
    if (!on && i >= 0) picked.splice(i, 1);
    refresh();
  };
  return { button, toggle };
}

// Rows are kept and updated in place, so a poll does not steal keyboard focus from a link in the table.
function makeRow(id, picker) {
  const pick = h("input", { type: "checkbox", "data-testid": "compare-pick", onchange: (e) => picker.toggle(id, e.target.checked) });
  const cells = {
    pick,
    status: statusBadge("queued"),
    progress: progressBar(null, ""),
    link: h("a", { href: `#/jobs/${encodeURIComponent(id)}`, "data-testid": "job-link" }),
    created: h("td"),
    duration: h("td", { class: "num" }),
    best: h("td", { class: "num" }),
  };
  const tr = h(
    "tr",
    { "data-job-id": id },
    h("td", {}, cells.pick),
    h("td", {}, cells.status),
    h("td", {}, cells.progress),
    h("td", {}, cells.link),
    cells.created,
    cells.duration,
    cells.best,
  );
  return { tr, cells };
}

function updateRow({ tr, cells }, job) {
  const name = job.name || job.id.slice(0, 8);
  tr.dataset.status = job.status;
  cells.status.className = `badge badge-${job.status}`;
  cells.status.textContent = job.status;
  const fraction = Math.max(0, Math.min(1, job.progress?.fraction ?? 0));
  cells.progress.value = fraction;
  cells.progress.title = `${(fraction * 100).toFixed(0)} %`;
  cells.progress.setAttribute("aria-label", `Progress of ${name}`);
  cells.link.textContent = name;
  cells.pick.setAttribute("aria-label", `Compare ${name}`);
  cells.created.textContent = formatTime(job.created_at);
  cells.created.title = job.created_at;
  cells.duration.textContent = formatDuration(jobDuration(job));
  cells.best.textContent = formatBest(job.best);
}
