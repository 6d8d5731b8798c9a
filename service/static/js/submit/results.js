// The submit page's check results: the status line, each problem at its JSON path, warnings, the layer
// table and the summary.

import { layerTable, reportSummary, warningList } from "../report.js";
import { fill, formatNumber, h } from "../ui.js";

// Renders a report (or a 422 body shaped like one) against the spec it was computed for.
export function showReport({ status, results, submitButton, reveal }, report, spec) {
  const errors = report.errors || [];
  submitButton.disabled = errors.length > 0;
  if (errors.length) {
    status.textContent = `${errors.length} problem${errors.length > 1 ? "s" : ""}`;
    status.className = "error";
  } else {
    status.textContent = `Valid · ${formatNumber(report.total_params)} parameters`;
    status.className = "ok";
  }
  const layers = Array.isArray(spec?.model?.layers) ? spec.model.layers : null;
  fill(
    results,
    errors.length ? specErrors(errors, reveal) : null,
    warningList(report.warnings),
    report.layers || layers ? layerTable(report, { specLayers: layers, errors }) : null,
    report.layers ? reportSummary(report) : null,
  );
}

function specErrors(errors, reveal) {
  const item = (e) =>
    h(
      "li",
      { "data-loc": e.loc || "" },
      e.loc ? h("button", { type: "button", class: "loc", onclick: () => reveal(e.loc) }, e.loc) : null,
      e.loc ? ": " : "",
      e.msg,
    );
  return h("ul", { class: "errors", "data-testid": "spec-errors" }, errors.map(item));
}

// An API error as a report: its located problems, or its message alone.
export function errorReport(err) {
  return { ok: false, errors: err.errors?.length ? err.errors : [{ loc: "", msg: err.message }] };
}
