// The job page's predict form: input rows as JSON, a checkpoint choice, and the predictions as a table.

import { api } from "../api.js";
import { errorList, fill, formatNumber, h } from "../ui.js";

export function predictForm(page) {
  const input = h("textarea", {
    id: "predict-input",
    rows: "4",
    spellcheck: "false",
    "data-testid": "predict-input",
    "aria-describedby": "predict-help",
  });
  const checkpoint = h(
    "select",
    { id: "predict-checkpoint", "data-testid": "predict-checkpoint" },
    h("option", { value: "best" }, "best"),
    h("option", { value: "latest" }, "latest"),
  );
  const output = h("div", { "data-testid": "predict-output", "aria-live": "polite" });
  const el = h(
    "form",
    { class: "card", "aria-labelledby": "predict-title", onsubmit: (event) => predict(event, page, { input, checkpoint, output }) },
    h("h2", { id: "predict-title" }, "Predict"),
    h("label", { for: "predict-input" }, "Input rows (JSON)"),
    input,
    h("p", { id: "predict-help", class: "muted" }, "A list of rows, one list of numbers per sample."),
    h(
      "div",
      { class: "row" },
      h("label", { for: "predict-checkpoint" }, "Checkpoint"),
      checkpoint,
      h("button", { type: "submit", "data-testid": "predict-submit" }, "Predict"),
    ),
    output,
  );
  return { el, show: (job, firstTime) => firstTime && fillDefault(input, job) };
}

// One row of zeros of the right width, when the input is small enough to read.
function fillDefault(input, job) {
  const shape = job.report?.input_shape;
  const width = Array.isArray(shape) ? shape.reduce((a, b) => a * b, 1) : 0;
  if (width > 0 && width <= 64 && !input.value) input.value = JSON.stringify([new Array(width).fill(0)]);
}

async function predict(event, page, { input, checkpoint, output }) {
  event.preventDefault();
  let inputs;
  try {
    inputs = JSON.parse(input.value);
  } catch (err) {
    output.replaceChildren(h("p", { class: "error" }, `Not JSON: ${err.message}`));
    return;
  }
  output.replaceChildren(h("p", { class: "muted" }, "Predicting…"));
  try {
    const out = await api.predict({ job_id: page.jobId, checkpoint: checkpoint.value, inputs });
    output.replaceChildren(predictionTable(out));
  } catch (err) {
    fill(output, h("p", { class: "error" }, err.message), err.errors?.length ? errorList(err.errors, "predict-errors") : null);
  }
}

function predictionTable(out) {
  const probs = out.probabilities;
  const classes = out.classes;
  const header = ["#", "Prediction", ...(probs && classes ? classes.map((c) => `P(${c})`) : [])];
  const row = (p, i) =>
    h(
      "tr",
      {},
      h("td", { class: "num" }, String(i)),
      h("td", { class: "num" }, Array.isArray(p) ? p.map(formatNumber).join(", ") : formatNumber(p)),
      probs ? probs[i].map((v) => h("td", { class: "num" }, v.toFixed(3))) : null,
    );
  return h(
    "table",
    { "data-testid": "predictions" },
    h("caption", { class: "muted" }, `Checkpoint ${out.checkpoint_id ?? ""}`),
    h("thead", {}, h("tr", {}, header.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, out.predictions.map(row)),
  );
}
