// The compare page (#/compare?ids=A,B): the picked jobs side by side, their curves overlaid and the spec paths
// whose values differ between them (GET /jobs/compare).

import { api } from "../api.js";
import { PALETTE } from "../charts.js";
import { overlayCharts, runLabels } from "../overlay.js";
import { formatBest, h, statusBadge } from "../ui.js";

const MAX_POINTS = 1000;

export function renderCompare(main, ids) {
  const controller = new AbortController();
  let charts = null;
  const body = h("div", { "data-testid": "compare" }, h("p", { class: "muted", role: "status" }, "Loading…"));
  main.append(
    h(
      "section",
      {},
      h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← Jobs")),
      h("div", { class: "page-head" }, h("h1", {}, `Compare ${ids.length} jobs`)),
      body,
    ),
  );
  if (ids.length < 2) {
    body.replaceChildren(h("p", { role: "alert" }, "Pick at least two jobs in the jobs list to compare them."));
  } else {
    api
      .compare({ ids: ids.join(","), max_points: String(MAX_POINTS) }, controller.signal)
      .then((result) => {
        charts = overlayCharts(result.jobs, { testidPrefix: "compare-chart" });
        body.replaceChildren(...comparison(result, charts));
      })
      .catch((err) => err.name !== "AbortError" && body.replaceChildren(h("p", { class: "error", role: "alert" }, err.message)));
  }
  return () => {
    controller.abort();
    charts?.destroy();
  };
}

function comparison(result, charts) {
  const labels = runLabels(result.jobs);
  return [
    jobTable(result.jobs, labels),
    h("section", { class: "card", "aria-labelledby": "diff-title" }, h("h2", { id: "diff-title" }, "What differs"), diffTable(result.spec_diff, labels)),
    h("section", { class: "card", "aria-labelledby": "overlay-title" }, h("h2", { id: "overlay-title" }, "Curves"), charts.el),
  ];
}

function jobTable(jobs, labels) {
  const row = (job, i) =>
    h(
      "tr",
      { "data-job-id": job.id },
      h("td", {}, h("span", { class: "swatch", style: `background:${PALETTE[i % PALETTE.length]}` }), labels[i]),
      h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id.slice(0, 8))),
      h("td", {}, statusBadge(job.status)),
      h("td", { class: "num" }, formatBest(job.best)),
    );
  return h(
    "table",
    { "data-testid": "compare-jobs" },
    h("thead", {}, h("tr", {}, ["Run", "Job", "Status", "Best"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, jobs.map(row)),
  );
}

// A spec value as a short, readable cell: numbers and strings as they are, anything else as JSON.
export function formatValue(value) {
  if (value === undefined) return "—";
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

function diffTable(specDiff, labels) {
  const paths = Object.keys(specDiff || {}).sort();
  if (!paths.length) return h("p", { class: "muted", "data-testid": "spec-diff" }, "The specs are the same.");
  return h(
    "table",
    { "data-testid": "spec-diff" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Spec path"), labels.map((l) => h("th", { scope: "col" }, l)))),
    h(
      "tbody",
      {},
      paths.map((path) =>
        h("tr", { "data-path": path }, h("td", {}, h("code", {}, path)), specDiff[path].map((v) => h("td", {}, h("code", {}, formatValue(v))))),
      ),
    ),
  );
}
