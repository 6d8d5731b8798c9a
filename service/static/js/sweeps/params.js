// A sweep's objective against each parameter: one scatter plot per parameter (uPlot, points only), so a user
// sees which values did well. Choices that are not numbers are spread along the axis in their sorted order.

import { h } from "../ui.js";
import { paramNames } from "./trials.js";

export function paramPlots(trials, objective) {
  const done = trials.filter((t) => typeof t.value === "number" && Number.isFinite(t.value));
  const plots = paramNames(trials).map((name) => paramPlot(done, name, objective.metric));
  const el = h(
    "div",
    { class: "charts params", "data-testid": "param-plots" },
    plots.length ? plots.map((p) => p.el) : h("p", { class: "muted" }, "No parameters."),
  );
  requestAnimationFrame(() => plots.forEach((p) => p.draw()));
  return { el, destroy: () => plots.forEach((p) => p.destroy()) };
}

// x positions for a parameter's values: the numbers themselves, or ranks for anything else.
function positions(values) {
  if (values.every((v) => typeof v === "number")) return { xs: values, label: null };
  const keys = [...new Set(values.map((v) => JSON.stringify(v)))].sort();
  return { xs: values.map((v) => keys.indexOf(JSON.stringify(v))), label: (i) => keys[i] ?? "" };
}

function paramPlot(trials, name, metric) {
  const { xs, label } = positions(trials.map((t) => t.params?.[name]));
  const pairs = xs.map((x, i) => [x, trials[i].value]).sort((a, b) => a[0] - b[0]);
  const box = h("div", { class: "chart-canvas" });
  const el = h(
    "figure",
    { class: "chart", "data-testid": "param-plot", "data-param": name, "data-points": String(pairs.length), role: "img", "aria-label": `${metric} against ${name}` },
    h("figcaption", {}, `${metric} against ${name}`),
    pairs.length ? box : h("p", { class: "muted chart-empty" }, "No trial has a value yet."),
  );
  let plot = null;
  const draw = () => {
    if (!pairs.length) return;
    const data = [pairs.map((p) => p[0]), pairs.map((p) => p[1])];
    plot = new uPlot(scatterOptions(name, metric, label, Math.max(240, box.clientWidth || 360)), data, box);
  };
  return { el, draw, destroy: () => plot?.destroy() };
}

function scatterOptions(name, metric, label, width) {
  const categorical = label !== null;
  return {
    width,
    height: 180,
    scales: { x: { time: false, range: categorical ? (_, lo, hi) => [lo - 0.5, hi + 0.5] : undefined } },
    axes: [
      { label: name, values: (_, splits) => splits.map((s) => (categorical ? (Number.isInteger(s) ? label(s) : "") : shortNumber(s))) },
      { size: 64 },
    ],
    legend: { show: false },
    series: [{ label: name }, { label: metric, stroke: "#2563eb", paths: () => null, points: { show: true, size: 7, fill: "#2563eb" } }],
  };
}

function shortNumber(v) {
  const abs = Math.abs(v);
  return abs !== 0 && (abs < 1e-3 || abs >= 1e5) ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}
