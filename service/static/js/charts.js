// Metric series kept in the page and drawn with uPlot (vendor/uPlot.iife.min.js, global `uPlot`).

import { h } from "./ui.js";

// Past this many points a series is thinned by half: a chart is a few hundred pixels wide.
const MAX_SERIES_POINTS = 20_000;

const COLORS = {
  train_loss: "#2563eb",
  val_loss: "#dc2626",
  val_accuracy: "#16a34a",
  val_r2: "#16a34a",
  val_mae: "#9333ea",
  lr: "#d97706",
};

// Distinct colours for overlaid runs (compare, a sweep's trials), told apart by position, not by metric.
export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#d97706", "#0891b2", "#db2777", "#65a30d", "#475569"];

// Points by metric name, each series sorted by step with one value per step (a resumed job re-sends the
// steps past its checkpoint: the newer value replaces the older one).
export class MetricStore {
  constructor() {
    this.series = new Map();
    this.lastStep = 0;
  }

  add(points) {
    for (const p of points) {
      if (typeof p.value !== "number") continue;
      let s = this.series.get(p.name);
      if (!s) this.series.set(p.name, (s = { steps: [], values: [] }));
      const n = s.steps.length;
      if (n === 0 || p.step > s.steps[n - 1]) {
        s.steps.push(p.step);
        s.values.push(p.value);
      } else {
        const i = lowerBound(s.steps, p.step);
        if (s.steps[i] === p.step) s.values[i] = p.value;
        else {
          s.steps.splice(i, 0, p.step);
          s.values.splice(i, 0, p.value);
        }
      }
      if (s.steps.length > MAX_SERIES_POINTS) thin(s);
      this.lastStep = Math.max(this.lastStep, p.step);
    }
  }

  count(name) {
    return this.series.get(name)?.steps.length ?? 0;
  }
}

function lowerBound(sorted, x) {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function thin(s) {
  const last = s.steps.length - 1;
  s.steps = s.steps.filter((_, i) => i % 2 === 0 || i === last);
  s.values = s.values.filter((_, i) => i % 2 === 0 || i === last);
}

// Exponential moving average with the start-up bias removed (as TensorBoard does), so the first points
// are not dragged towards zero.
export function smooth(values, weight) {
  if (weight <= 0) return values;
  let ema = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return v;
    n += 1;
    ema = ema * weight + (1 - weight) * v;
    return ema / (1 - weight ** n);
  });
}

function tick(v) {
  if (v === null || v === undefined) return "";
  if (v === 0) return "0";
  const abs = Math.abs(v);
  return abs < 1e-3 || abs >= 1e5 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

// The union of the series' steps, with null where a series has no point: uPlot wants one shared x array.
function align(store, names, transform) {
  const steps = [...new Set(names.flatMap((n) => store.series.get(n)?.steps ?? []))].sort((a, b) => a - b);
  const index = new Map(steps.map((s, i) => [s, i]));
  const columns = names.map((name) => {
    const column = new Array(steps.length).fill(null);
    const s = store.series.get(name);
    if (s) {
      const values = transform(name, s.values);
      s.steps.forEach((step, i) => (column[index.get(step)] = values[i]));
    }
    return column;
  });
  return [steps, ...columns];
}

// One chart of a few named series from a MetricStore. `options.log` switches the y axis to a log scale
// (non-positive values are dropped), `options.smoothing` (0..1) applies the moving average.
export class MetricChart {
  constructor({ title, names, testid, smoothable = true, height = 200, palette = null }) {
    this.height = height;
    this.palette = palette; // colours by position in `names` instead of by metric name
    this.title = title;
    this.allNames = names;
    this.smoothable = smoothable;
    this.names = [];
    this.plot = null;
    this.options = { log: false, smoothing: 0 };
    this.canvasBox = h("div", { class: "chart-canvas" });
    this.empty = h("p", { class: "muted chart-empty" }, "No points yet.");
    this.el = h(
      "figure",
      { class: "chart", "data-testid": testid, "data-points": "0", role: "img", "aria-label": title },
      h("figcaption", {}, title),
      this.empty,
      this.canvasBox,
    );
    this.resizeObserver = new ResizeObserver(() => this.plot?.setSize(this.size()));
    this.resizeObserver.observe(this.canvasBox);
  }

  size() {
    return { width: Math.max(240, this.canvasBox.clientWidth || 480), height: this.height };
  }

  // What an empty chart says: "No points yet." while the job may still log some.
  setEmptyText(text) {
    this.empty.textContent = text;
  }

  setOptions(options) {
    this.options = { ...this.options, ...options };
    this.destroyPlot(); // the y scale's distribution is fixed at creation
  }

  render(store) {
    const names = this.allNames.filter((n) => store.count(n) > 0);
    const total = names.reduce((sum, n) => sum + store.count(n), 0);
    this.el.dataset.points = String(total);
    this.empty.hidden = total > 0;
    if (total === 0) return;
    const { log, smoothing } = this.options;
    const data = align(store, names, (_, values) => {
      const v = this.smoothable ? smooth(values, smoothing) : values;
      return log ? v.map((x) => (x > 0 ? x : null)) : v;
    });
    if (!this.plot || names.join() !== this.names.join()) {
      this.destroyPlot();
      this.names = names;
      this.plot = new uPlot(this.plotOptions(names, log), data, this.canvasBox);
    } else {
      this.plot.setData(data);
    }
    this.el.setAttribute("aria-label", `${this.title}: ${this.summary(store, names)}`);
  }

  summary(store, names) {
    return names
      .map((n) => {
        const s = store.series.get(n);
        return `${n} ${s.values[s.values.length - 1].toPrecision(4)} at step ${s.steps[s.steps.length - 1]}`;
      })
      .join(", ");
  }

  plotOptions(names, log) {
    return {
      ...this.size(),
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [{ label: "step" }, { size: 64, values: (_, splits) => splits.map(tick) }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      series: [
        { label: "step" },
        ...names.map((name) => ({
          label: name,
          stroke: this.colorOf(name),
          width: 1.5,
          spanGaps: true,
          value: (_, v) => (v === null ? "–" : v.toPrecision(4)),
        })),
      ],
    };
  }

  colorOf(name) {
    if (this.palette) return this.palette[this.allNames.indexOf(name) % this.palette.length];
    return COLORS[name] || "#475569";
  }

  destroyPlot() {
    this.plot?.destroy();
    this.plot = null;
    this.names = [];
  }

  destroy() {
    this.resizeObserver.disconnect();
    this.destroyPlot();
  }
}
