// The static check's report (POST /jobs/validate, a job's `report`) as a per-layer table and a summary.

import { formatNumber, formatShape, h } from "./ui.js";

const LAYER_LOC = /^model\.layers\[(\d+)\]/;

// The layer index an error path points into, or null: "model.layers[2].in_features" → 2.
export function layerIndexOf(loc) {
  const m = LAYER_LOC.exec(loc || "");
  return m ? Number(m[1]) : null;
}

// specLayers (the layers of the spec as typed, when known) give every row its type even when the check
// stopped before computing shapes; errors mark the rows they point into.
export function layerTable(report, { specLayers = null, errors = [] } = {}) {
  const computed = new Map((report?.layers || []).map((l) => [l.index, l]));
  const count = Math.max(specLayers?.length ?? 0, ...[...computed.keys()].map((i) => i + 1), 0);
  const problems = new Map();
  for (const e of errors) {
    const i = layerIndexOf(e.loc);
    if (i !== null) problems.set(i, [...(problems.get(i) || []), e]);
  }
  const rows = [];
  for (let i = 0; i < count; i++) {
    const layer = computed.get(i);
    const typed = specLayers?.[i];
    const bad = problems.get(i);
    rows.push(
      h(
        "tr",
        { "data-layer-index": i, class: bad ? "has-error" : null },
        h("td", { class: "num" }, String(i)),
        h("td", {}, layer?.type || (typed && typeof typed === "object" ? String(typed.type ?? "?") : "?")),
        h("td", {}, formatShape(layer?.output_shape)),
        h("td", { class: "num" }, formatNumber(layer?.params)),
        h("td", { class: "num" }, formatNumber(layer?.flops)),
        h("td", { class: "error" }, bad ? bad.map((e) => e.msg).join("; ") : ""),
      ),
    );
  }
  return h(
    "table",
    { class: "layers", "data-testid": "layer-table" },
    h("caption", {}, "Layers"),
    h(
      "thead",
      {},
      h("tr", {}, ["#", "Type", "Output shape", "Params", "FLOPs", "Problem"].map((t) => h("th", { scope: "col" }, t))),
    ),
    h("tbody", {}, rows),
  );
}

export function reportSummary(report) {
  if (!report) return h("p", { class: "muted" }, "No report.");
  const items = [
    ["Input shape", formatShape(report.input_shape)],
    ["Output shape", formatShape(report.output_shape)],
    ["Parameters", formatNumber(report.total_params)],
    ["Trainable", formatNumber(report.trainable_params)],
    ["FLOPs per sample", formatNumber(report.flops_per_sample)],
    ["Memory", report.memory_bytes ? `${(report.memory_bytes / 2 ** 20).toFixed(2)} MiB` : ""],
    ["Steps per epoch", formatNumber(report.steps_per_epoch)],
    ["Total steps", formatNumber(report.total_steps)],
  ].filter(([, v]) => v !== "");
  return h(
    "dl",
    { class: "summary", "data-testid": "report-summary" },
    items.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k }, v)]),
  );
}

export function warningList(warnings) {
  if (!warnings?.length) return null;
  return h(
    "ul",
    { class: "warnings", "data-testid": "warnings" },
    warnings.map((w) => h("li", {}, w.loc ? [h("code", {}, w.loc), ": "] : null, w.msg)),
  );
}
