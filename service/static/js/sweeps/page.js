// A sweep's page (#/sweeps/{id}): its status and best trial, the trials sortable by objective (best first),
// the trials' curves overlaid and the objective against each parameter.

import { api } from "../api.js";
import { overlayCharts } from "../overlay.js";
import { FINISHED, fill, formatNumber, h, statusBadge } from "../ui.js";
import { trialCount } from "./list.js";
import { paramPlots } from "./params.js";
import { byObjective, trialTable } from "./trials.js";

const POLL_MS = 3000;
const MAX_POINTS = 500;
const MAX_OVERLAID = 20; // the best trials: more lines than this is noise

export function renderSweep(main, sweepId) {
  const controller = new AbortController();
  const state = { timer: null, table: null, graphs: [], curvesFor: "" };
  const head = h("div");
  const tableBox = h("section", { class: "card", "aria-labelledby": "trials-title" }, h("h2", { id: "trials-title" }, "Trials"));
  const curvesBox = h("div");
  const paramsBox = h("div");
  main.append(h("section", { "data-testid": "sweep" }, h("p", { class: "crumbs" }, h("a", { href: "#/sweeps" }, "← Sweeps")), head, tableBox, curvesBox, paramsBox));

  async function poll() {
    try {
      const sweep = await api.getSweep(sweepId, controller.signal);
      show(sweep);
      if (!FINISHED.has(sweep.status)) state.timer = setTimeout(poll, POLL_MS);
    } catch (err) {
      if (err.name !== "AbortError") fill(head, h("h1", {}, "Sweep"), h("p", { class: "error", role: "alert" }, err.status === 404 ? `There is no sweep ${sweepId}.` : err.message));
    }
  }

  function show(sweep) {
    const objective = sweep.objective || { metric: "objective", mode: "min" };
    if (state.table === null) {
      document.title = `${sweep.name || sweep.id} · trainserve`;
      state.table = trialTable(objective.mode);
      tableBox.append(state.table.el);
    }
    fill(head, sweepHeader(sweep, objective));
    state.table.update(sweep.trials || []);
    state.graphs.find((g) => g.kind === "params")?.destroy();
    const params = { kind: "params", ...paramPlots(sweep.trials || [], objective) };
    state.graphs = [...state.graphs.filter((g) => g.kind !== "params"), params];
    fill(paramsBox, h("section", { class: "card", "aria-labelledby": "params-title" }, h("h2", { id: "params-title" }, "Objective by parameter"), params.el));
    loadCurves(state, sweep, objective, { box: curvesBox, signal: controller.signal });
  }

  poll();
  return () => {
    clearTimeout(state.timer);
    controller.abort();
    state.graphs.forEach((g) => g.destroy());
  };
}

// The overlaid curves of the best trials, reloaded when the set of trials or their statuses change.
async function loadCurves(state, sweep, objective, { box, signal }) {
  const trials = [...(sweep.trials || [])].sort(byObjective(objective.mode)).slice(0, MAX_OVERLAID);
  const key = trials.map((t) => `${t.job_id}:${t.status}`).join();
  if (!trials.length || key === state.curvesFor) return;
  state.curvesFor = key;
  const names = [...new Set([objective.metric, "val_loss", "train_loss"])].join(",");
  try {
    const result = await api.compare({ ids: trials.map((t) => t.job_id).join(","), names, max_points: String(MAX_POINTS) }, signal);
    state.graphs.find((g) => g.kind === "curves")?.destroy();
    const labels = trials.map((t) => `trial ${t.number}`);
    const curves = { kind: "curves", ...overlayCharts(result.jobs, { labels, testidPrefix: "sweep-chart" }) };
    state.graphs = [...state.graphs.filter((g) => g.kind !== "curves"), curves];
    fill(box, h("section", { class: "card", "aria-labelledby": "sweep-curves" }, h("h2", { id: "sweep-curves" }, "Curves of the trials"), curves.el));
  } catch (err) {
    if (err.name !== "AbortError") fill(box, h("p", { class: "error" }, `Could not load the curves: ${err.message}`));
  }
}

function sweepHeader(sweep, objective) {
  const best = sweep.best;
  const counts = Object.entries(sweep.counts || {}).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(", ");
  return [
    h("div", { class: "page-head" }, h("h1", { "data-testid": "sweep-name" }, sweep.name || sweep.id), statusBadge(sweep.status)),
    h(
      "dl",
      { class: "summary", "data-testid": "sweep-facts" },
      h("dt", {}, "Objective"),
      h("dd", {}, `${objective.metric} (${objective.mode === "max" ? "higher" : "lower"} is better)`),
      h("dt", {}, "Trials"),
      h("dd", {}, `${trialCount(sweep)}${counts ? ` · ${counts}` : ""}`),
      best ? [h("dt", {}, "Best"), h("dd", { "data-testid": "sweep-best" }, formatNumber(best.value), " · ", h("a", { href: `#/jobs/${encodeURIComponent(best.job_id)}` }, "its job"), " · ", h("code", {}, JSON.stringify(best.params)))] : null,
    ),
  ];
}
