// The sweeps page (#/sweeps): the tenant's sweeps, newest first, with their trial counts and best value.

import { api } from "../api.js";
import { formatNumber, formatTime, h, statusBadge } from "../ui.js";

const POLL_MS = 3000;

export function renderSweeps(main) {
  const controller = new AbortController();
  let timer = null;
  const body = h("tbody", { "data-testid": "sweeps-rows" });
  const message = h("p", { class: "muted", role: "status" });
  main.append(
    h(
      "section",
      {},
      h("div", { class: "page-head" }, h("h1", {}, "Sweeps")),
      h("table", { class: "jobs", "data-testid": "sweeps-table" }, h("thead", {}, h("tr", {}, ["Status", "Name", "Trials", "Best", "Created"].map((t) => h("th", { scope: "col" }, t)))), body),
      message,
    ),
  );

  async function poll() {
    try {
      const page = await api.listSweeps({ limit: "100" }, controller.signal);
      body.replaceChildren(...page.items.map(sweepRow));
      message.textContent = page.items.length ? "" : "No sweeps yet: POST /sweeps, or `trainserve sweep SPEC --space SPACE.json`.";
    } catch (err) {
      if (err.name === "AbortError") return;
      message.textContent = `Could not load sweeps: ${err.message}`;
    }
    timer = setTimeout(poll, POLL_MS);
  }
  poll();
  return () => {
    clearTimeout(timer);
    controller.abort();
  };
}

export function trialCount(sweep) {
  const counts = sweep.counts || {};
  const done = Object.values(counts).reduce((a, b) => a + b, 0);
  const planned = sweep.search?.trials;
  return planned ? `${done} / ${planned}` : String(done);
}

function sweepRow(sweep) {
  return h(
    "tr",
    { "data-sweep-id": sweep.id, "data-status": sweep.status },
    h("td", {}, statusBadge(sweep.status)),
    h("td", {}, h("a", { href: `#/sweeps/${encodeURIComponent(sweep.id)}`, "data-testid": "sweep-link" }, sweep.name || sweep.id.slice(0, 8))),
    h("td", { class: "num" }, trialCount(sweep)),
    h("td", { class: "num" }, sweep.best ? formatNumber(sweep.best.value) : ""),
    h("td", {}, formatTime(sweep.created_at)),
  );
}
