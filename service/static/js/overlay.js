// Curves of several jobs overlaid, one chart per metric: what GET /jobs/compare answers, drawn for the compare
// page and a sweep's trials. Each run is one series, coloured by its position.

import { MetricChart, MetricStore, PALETTE } from "./charts.js";
import { h } from "./ui.js";

// Metrics worth a chart first, in this order; any other series the jobs have follows.
const ORDER = ["train_loss", "val_loss", "val_accuracy", "val_r2", "val_mae", "lr"];

// A short, unique label per job: its position and its name (or id).
export function runLabels(jobs) {
  return jobs.map((job, i) => `${i + 1}. ${job.name || job.id.slice(0, 8)}`);
}

function metricNames(jobs) {
  const names = new Set(jobs.flatMap((job) => Object.keys(job.series || {})));
  return [...ORDER.filter((n) => names.has(n)), ...[...names].filter((n) => !ORDER.includes(n)).sort()];
}

// One chart per metric. Returns { el, destroy }; the charts draw once they are in the page.
export function overlayCharts(jobs, { labels = runLabels(jobs), testidPrefix = "overlay-chart" } = {}) {
  const charts = metricNames(jobs).map((metric) => overlayChart(jobs, labels, metric, testidPrefix));
  const el = h(
    "div",
    { class: "charts overlay" },
    charts.length ? charts.map((c) => c.chart.el) : h("p", { class: "muted" }, "No points recorded."),
  );
  // uPlot measures its box: draw after the page has laid it out.
  requestAnimationFrame(() => charts.forEach((c) => c.chart.render(c.store)));
  return { el, destroy: () => charts.forEach((c) => c.chart.destroy()) };
}

function overlayChart(jobs, labels, metric, testidPrefix) {
  const store = new MetricStore();
  jobs.forEach((job, i) => store.add((job.series?.[metric] || []).map((p) => ({ name: labels[i], step: p.step, value: p.value }))));
  const chart = new MetricChart({ title: metric, names: labels, testid: `${testidPrefix}-${metric}`, palette: PALETTE, smoothable: false });
  chart.el.dataset.metric = metric;
  return { chart, store };
}
