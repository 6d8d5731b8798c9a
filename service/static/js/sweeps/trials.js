// A sweep's trial table: number, status, each parameter, the objective and epochs done; sorted by objective,
// best first, or by any column the user clicks. Each trial links to its job page.

import { formatNumber, h, statusBadge } from "../ui.js";

// Best first for the sweep's mode; trials without a value (not yet evaluated, failed) last.
export function byObjective(mode) {
  const sign = mode === "max" ? -1 : 1;
  return (a, b) => {
    const av = a.value ?? null;
    const bv = b.value ?? null;
    if (av === null || bv === null) return (av === null) - (bv === null) || a.number - b.number;
    return sign * (av - bv) || a.number - b.number;
  };
}

function byKey(key) {
  return (a, b) => {
    const av = key(a);
    const bv = key(b);
    if (av === bv) return a.number - b.number;
    if (av === undefined || av === null) return 1;
    if (bv === undefined || bv === null) return -1;
    return av < bv ? -1 : 1;
  };
}

export function paramNames(trials) {
  return [...new Set(trials.flatMap((t) => Object.keys(t.params || {})))].sort();
}

// A table element whose rows re-sort on a header click; `update(trials)` refreshes it in place.
export function trialTable(mode) {
  const state = { sort: "value", trials: [] };
  const table = h("table", { "data-testid": "trials" });
  const comparator = () =>
    state.sort === "value" ? byObjective(mode) : state.sort === "number" ? byKey((t) => t.number) : byKey((t) => t.params?.[state.sort]);

  function draw() {
    const params = paramNames(state.trials);
    const rows = [...state.trials].sort(comparator()).map((t) => trialRow(t, params));
    table.replaceChildren(header(params, state, draw), h("tbody", {}, rows));
  }
  return {
    el: table,
    update(trials) {
      state.trials = trials;
      draw();
    },
  };
}

function header(params, state, draw) {
  const sortable = (key, label, num = false) =>
    h(
      "th",
      { scope: "col", class: num ? "num" : null, "aria-sort": state.sort === key ? "ascending" : null },
      h("button", { type: "button", class: "link-button", "data-sort": key, onclick: () => ((state.sort = key), draw()) }, label),
    );
  return h(
    "thead",
    {},
    h(
      "tr",
      {},
      sortable("number", "#", true),
      h("th", { scope: "col" }, "Status"),
      params.map((p) => sortable(p, p)),
      sortable("value", "Objective", true),
      h("th", { scope: "col", class: "num" }, "Epochs"),
    ),
  );
}

function trialRow(trial, params) {
  const value = (v) => (typeof v === "number" ? formatNumber(v) : JSON.stringify(v ?? null));
  return h(
    "tr",
    { "data-trial": trial.number, "data-job-id": trial.job_id, "data-status": trial.status },
    h("td", { class: "num" }, h("a", { href: `#/jobs/${encodeURIComponent(trial.job_id)}`, "data-testid": "trial-link" }, String(trial.number))),
    h("td", {}, statusBadge(trial.status)),
    params.map((p) => h("td", {}, h("code", {}, value(trial.params?.[p])))),
    h("td", { class: "num", "data-testid": "trial-value" }, trial.value === null || trial.value === undefined ? "" : formatNumber(trial.value)),
    h("td", { class: "num" }, formatNumber(trial.epochs)),
  );
}
