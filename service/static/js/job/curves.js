// The job page's curves: loss, validation and learning-rate charts, their controls (log scale, smoothing),
// the metric history and the live stream that extends it.

import { ApiError, api, streamEvents } from "../api.js";
import { MetricChart, MetricStore } from "../charts.js";
import { FINISHED, h } from "../ui.js";

const STREAM_RETRY_MS = 2000;
const INITIAL_MAX_POINTS = 5000;

function makeCharts() {
  return {
    loss: new MetricChart({ title: "Loss", names: ["train_loss", "val_loss"], testid: "chart-loss", height: 260 }),
    val: new MetricChart({
      title: "Validation accuracy / error",
      names: ["val_accuracy", "val_r2", "val_mae"],
      testid: "chart-val",
    }),
    lr: new MetricChart({ title: "Learning rate", names: ["lr"], testid: "chart-lr", smoothable: false }),
  };
}

export function jobCurves(page) {
  const store = new MetricStore();
  const charts = makeCharts();
  const redraw = frameScheduler(() => !page.stopped && Object.values(charts).forEach((c) => c.render(store)));
  const el = h(
    "section",
    { class: "card", "aria-labelledby": "curves-title" },
    h("div", { class: "section-head" }, h("h2", { id: "curves-title" }, "Curves"), chartControls(charts, redraw)),
    h("div", { class: "charts" }, Object.values(charts).map((c) => c.el)),
  );

  async function loadHistory() {
    const result = await api.metrics(page.jobId, { max_points: String(INITIAL_MAX_POINTS) }, page.signal);
    store.add(result.points);
    redraw();
    return result.status;
  }

  function show(job) {
    if (!FINISHED.has(job.status)) return;
    charts.val.setEmptyText("None: this job had no validation data (training.validation_split).");
    charts.loss.setEmptyText("None recorded.");
    charts.lr.setEmptyText("None recorded.");
  }

  const follow = streamFollower(page, store, redraw, loadHistory);
  return { el, show, loadHistory, follow, destroy: () => Object.values(charts).forEach((c) => c.destroy()) };
}

// Coalesces redraw requests into one per animation frame.
function frameScheduler(draw) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      draw();
    });
  };
}

function chartControls(charts, redraw) {
  const logToggle = h("input", { type: "checkbox", id: "log-scale", "data-testid": "log-scale" });
  const smoothing = h("input", {
    type: "range",
    id: "smoothing",
    min: "0",
    max: "0.99",
    step: "0.01",
    value: "0",
    "data-testid": "smoothing",
  });
  const smoothingValue = h("output", { for: "smoothing" }, "0.00");
  logToggle.addEventListener("change", () => {
    charts.loss.setOptions({ log: logToggle.checked });
    charts.lr.setOptions({ log: logToggle.checked });
    redraw();
  });
  smoothing.addEventListener("input", () => {
    const weight = Number(smoothing.value);
    smoothingValue.textContent = weight.toFixed(2);
    charts.loss.setOptions({ smoothing: weight });
    charts.val.setOptions({ smoothing: weight });
    redraw();
  });
  return h(
    "div",
    { class: "row controls" },
    h("label", { class: "check" }, logToggle, " Log scale"),
    h("label", { for: "smoothing" }, "Smoothing"),
    smoothing,
    smoothingValue,
  );
}

// Follows /metrics/stream until its end event; a dropped connection reconnects from the last step held.
function streamFollower(page, store, redraw, loadHistory) {
  let streaming = false;
  const onEvent = (state) => (event, data) => {
    if (event === "points" && Array.isArray(data)) {
      store.add(data);
      redraw();
    } else if (event === "status" && page.job) {
      page.showJob({ ...page.job, status: data.status ?? page.job.status, progress: data.progress ?? page.job.progress });
    } else if (event === "end") {
      state.ended = true;
    }
  };

  return async function follow() {
    if (streaming) return;
    streaming = true;
    const state = { ended: false };
    while (!page.stopped && !state.ended) {
      const retry = await streamOnce(page, store, onEvent(state));
      if (!retry || state.ended || page.stopped) break;
      await new Promise((resolve) => setTimeout(resolve, STREAM_RETRY_MS));
    }
    streaming = false;
    if (page.stopped) return;
    page.refresh(); // the final status, best checkpoint and duration
    // The stream resumes after the last step it sent, so a point the worker wrote later for a step already
    // sent (a step's val_loss after its train_loss) can be missing: one full read at the end fills it in.
    if (state.ended) loadHistory().catch(() => {});
  };
}

// One connection to the stream; answers whether reconnecting may help.
async function streamOnce(page, store, onEvent) {
  const params = new URLSearchParams();
  if (store.lastStep > 0) params.set("since_step", String(store.lastStep));
  try {
    await streamEvents(`jobs/${encodeURIComponent(page.jobId)}/metrics/stream?${params}`, { signal: page.signal, onEvent });
  } catch (err) {
    if (err.name === "AbortError" || page.stopped) return false;
    if (err instanceof ApiError && err.status < 500) return false; // 404 or 401: retrying will not help
  }
  return true;
}
