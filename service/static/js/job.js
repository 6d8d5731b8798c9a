// The job page (#/jobs/{id}): status and progress, live metric curves, checkpoints, cancel, predict, the
// static check's report and the spec.

import { ApiError, api, download, streamEvents } from "./api.js";
import { MetricChart, MetricStore } from "./charts.js";
import { layerTable, reportSummary, warningList } from "./report.js";
import {
  FINISHED,
  announce,
  errorList,
  fill,
  formatBest,
  formatDuration,
  formatNumber,
  formatTime,
  h,
  jobDuration,
} from "./ui.js";

const POLL_MS = 2000;
const STREAM_RETRY_MS = 2000;
const INITIAL_MAX_POINTS = 5000;
const DRAFT_STORAGE = "trainserve.draft";

export function renderJob(main, jobId) {
  const controller = new AbortController();
  const signal = controller.signal;
  let stopped = false;
  let pollTimer = null;
  let job = null;
  let checkpointsFor = undefined; // the latest_checkpoint_id the checkpoint table was loaded for
  let streaming = false;
  let predictInput; // the predict form's parts, built by predictForm() during layout
  let predictCheckpoint;
  let predictOutput;

  const store = new MetricStore();
  const charts = {
    loss: new MetricChart({ title: "Loss", names: ["train_loss", "val_loss"], testid: "chart-loss", height: 260 }),
    val: new MetricChart({
      title: "Validation accuracy / error",
      names: ["val_accuracy", "val_r2", "val_mae"],
      testid: "chart-val",
    }),
    lr: new MetricChart({ title: "Learning rate", names: ["lr"], testid: "chart-lr", smoothable: false }),
  };
  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (!stopped) Object.values(charts).forEach((c) => c.render(store));
    });
  }

  // --- layout ------------------------------------------------------------------------------------------
  const title = h("h1", { "data-testid": "job-name" }, "Job");
  const badge = h("span", { class: "badge", "data-testid": "job-status" });
  const statusLine = h("p", { class: "status-line", role: "status", "aria-live": "polite" }, "Status: ", badge);
  const cancelButton = h(
    "button",
    { type: "button", class: "danger", hidden: true, "data-testid": "cancel-job", onclick: cancel },
    "Cancel job",
  );
  const progress = h("progress", { max: 1, value: 0, "aria-label": "Training progress", "data-testid": "job-progress" });
  const progressText = h("span", { class: "muted" });
  const facts = h("dl", { class: "summary", "data-testid": "job-facts" });
  const errorBox = h("p", { class: "error", role: "alert", hidden: true, "data-testid": "job-error" });
  const notice = h("p", { class: "muted", role: "status" });

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
  const checkpointsBody = h("tbody", { "data-testid": "checkpoint-rows" });
  const reportBox = h("div");
  const specBox = h("pre", { class: "spec", "data-testid": "job-spec", tabindex: "0" });

  main.append(
    h(
      "section",
      { class: "job" },
      h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← Jobs")),
      h("div", { class: "page-head" }, title, cancelButton),
      statusLine,
      h("div", { class: "row" }, progress, progressText),
      errorBox,
      notice,
      facts,
      h(
        "section",
        { class: "card", "aria-labelledby": "curves-title" },
        h(
          "div",
          { class: "section-head" },
          h("h2", { id: "curves-title" }, "Curves"),
          h(
            "div",
            { class: "row controls" },
            h("label", { class: "check" }, logToggle, " Log scale"),
            h("label", { for: "smoothing" }, "Smoothing"),
            smoothing,
            smoothingValue,
          ),
        ),
        h("div", { class: "charts" }, Object.values(charts).map((c) => c.el)),
      ),
      h(
        "div",
        { class: "columns" },
        h(
          "section",
          { class: "card", "aria-labelledby": "ckpt-title" },
          h("h2", { id: "ckpt-title" }, "Checkpoints"),
          h(
            "table",
            { "data-testid": "checkpoints" },
            h(
              "thead",
              {},
              h("tr", {}, ["Step", "Epoch", "Metric", "Size", "", ""].map((t) => h("th", { scope: "col" }, t))),
            ),
            checkpointsBody,
          ),
        ),
        predictForm(),
      ),
      h("section", { class: "card", "aria-labelledby": "report-title" }, h("h2", { id: "report-title" }, "Static check"), reportBox),
      h(
        "section",
        { class: "card", "aria-labelledby": "spec-title" },
        h(
          "div",
          { class: "section-head" },
          h("h2", { id: "spec-title" }, "Spec"),
          h("button", { type: "button", class: "secondary", onclick: editAsNew, "data-testid": "edit-spec" }, "Edit as a new job"),
        ),
        specBox,
      ),
    ),
  );

  logToggle.addEventListener("change", () => {
    charts.loss.setOptions({ log: logToggle.checked });
    charts.lr.setOptions({ log: logToggle.checked });
    scheduleRender();
  });
  smoothing.addEventListener("input", () => {
    const weight = Number(smoothing.value);
    smoothingValue.textContent = weight.toFixed(2);
    charts.loss.setOptions({ smoothing: weight });
    charts.val.setOptions({ smoothing: weight });
    scheduleRender();
  });

  // --- job state ---------------------------------------------------------------------------------------
  function showJob(next) {
    const firstTime = job === null;
    job = next;
    const name = job.name || job.id;
    title.textContent = name;
    if (firstTime) document.title = `${name} · trainserve`;
    badge.className = `badge badge-${job.status}`;
    badge.textContent = job.cancel_requested && !FINISHED.has(job.status) ? `${job.status} (cancelling)` : job.status;
    main.querySelector(".job").dataset.status = job.status;
    cancelButton.hidden = FINISHED.has(job.status) || job.cancel_requested;
    const p = job.progress || {};
    progress.value = Math.max(0, Math.min(1, p.fraction ?? 0));
    progressText.textContent = [
      p.epochs ? `epoch ${p.epoch ?? 0} / ${p.epochs}` : "",
      p.total_steps ? `step ${p.step ?? 0} / ${p.total_steps}` : "",
      p.eta_seconds && !FINISHED.has(job.status) ? `ETA ${formatDuration(p.eta_seconds)}` : "",
    ]
      .filter(Boolean)
      .join(" · ");
    errorBox.hidden = !job.error;
    errorBox.textContent = job.error ? `Error: ${job.error}` : "";
    const lastMetrics = Object.entries(job.last_metrics || {})
      .map(([k, v]) => `${k} ${formatNumber(v)}`)
      .join(", ");
    const rows = [
      ["Id", h("code", {}, job.id)],
      ["Created", formatTime(job.created_at)],
      ["Started", formatTime(job.started_at)],
      ["Finished", formatTime(job.finished_at)],
      ["Duration", formatDuration(jobDuration(job))],
      ["Device", job.device || ""],
      ["Queue", job.queue || ""],
      ["Waiting", job.waiting_reason || ""],
      ["Attempts", String(job.attempts ?? "")],
      ["Best", formatBest(job.best)],
      ["Last metrics", lastMetrics],
    ].filter(([, v]) => v !== "");
    facts.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    if (firstTime) {
      specBox.textContent = JSON.stringify(job.spec ?? {}, null, 2);
      fill(
        reportBox,
        reportSummary(job.report),
        warningList(job.report?.warnings),
        layerTable(job.report, { specLayers: job.spec?.model?.layers }),
      );
      predictDefaults();
    }
    if (FINISHED.has(job.status)) {
      charts.val.setEmptyText("None: this job had no validation data (training.validation_split).");
      charts.loss.setEmptyText("None recorded.");
      charts.lr.setEmptyText("None recorded.");
    }
    if (job.latest_checkpoint_id !== checkpointsFor) loadCheckpoints();
  }

  async function refreshJob() {
    try {
      showJob(await api.getJob(jobId, signal));
    } catch (err) {
      if (err.name !== "AbortError" && !stopped) notice.textContent = `Could not refresh the job: ${err.message}`;
    }
  }

  async function pollJob() {
    await refreshJob();
    if (!stopped && job && !FINISHED.has(job.status)) pollTimer = setTimeout(pollJob, POLL_MS);
  }

  async function cancel() {
    cancelButton.disabled = true;
    try {
      showJob(await api.cancelJob(jobId));
      announce("Cancel requested");
    } catch (err) {
      notice.textContent = `Could not cancel: ${err.message}`;
      await refreshJob();
    } finally {
      cancelButton.disabled = false;
    }
  }

  function editAsNew() {
    sessionStorage.setItem(DRAFT_STORAGE, JSON.stringify(job?.spec ?? {}, null, 2));
    location.hash = "#/submit";
  }

  // --- metrics -----------------------------------------------------------------------------------------
  async function loadMetrics() {
    const page = await api.metrics(jobId, { max_points: String(INITIAL_MAX_POINTS) }, signal);
    store.add(page.points);
    scheduleRender();
    return page.status;
  }

  // Follows /metrics/stream until its end event; a dropped connection reconnects from the last step held.
  async function followMetrics() {
    if (streaming) return;
    streaming = true;
    let ended = false;
    while (!stopped && !ended) {
      const params = new URLSearchParams();
      if (store.lastStep > 0) params.set("since_step", String(store.lastStep));
      try {
        await streamEvents(`jobs/${encodeURIComponent(jobId)}/metrics/stream?${params}`, {
          signal,
          onEvent(event, data) {
            if (event === "points" && Array.isArray(data)) {
              store.add(data);
              scheduleRender();
            } else if (event === "status" && job) {
              showJob({ ...job, status: data.status ?? job.status, progress: data.progress ?? job.progress });
            } else if (event === "end") {
              ended = true;
            }
          },
        });
      } catch (err) {
        if (err.name === "AbortError" || stopped) break;
        if (err instanceof ApiError && err.status < 500) break; // 404 or 401: retrying will not help
      }
      if (ended || stopped) break;
      await new Promise((resolve) => setTimeout(resolve, STREAM_RETRY_MS));
    }
    streaming = false;
    if (stopped) return;
    refreshJob(); // the final status, best checkpoint and duration
    // The stream resumes after the last step it sent, so a point the worker wrote later for a step already
    // sent (a step's val_loss after its train_loss) can be missing: one full read at the end fills it in.
    if (ended) loadMetrics().catch(() => {});
  }

  // --- checkpoints -------------------------------------------------------------------------------------
  async function loadCheckpoints() {
    checkpointsFor = job.latest_checkpoint_id;
    try {
      const page = await api.checkpoints(jobId, signal);
      checkpointsBody.replaceChildren(
        ...page.items.map((c) =>
          h(
            "tr",
            { "data-checkpoint-id": c.id },
            h("td", { class: "num" }, formatNumber(c.step)),
            h("td", { class: "num" }, formatNumber(c.epoch)),
            h("td", {}, c.metric ? `${c.metric} ${formatNumber(c.value)}` : ""),
            h("td", { class: "num" }, `${(c.size_bytes / 1024).toFixed(1)} KiB`),
            h("td", {}, [c.is_best ? h("span", { class: "tag" }, "best") : null, c.is_latest ? h("span", { class: "tag" }, "latest") : null]),
            h(
              "td",
              {},
              h(
                "a",
                {
                  href: `jobs/${encodeURIComponent(jobId)}/checkpoints/${encodeURIComponent(c.id)}`,
                  "data-testid": "checkpoint-download",
                  "aria-label": `Download the checkpoint of step ${c.step}`,
                  onclick: (event) => {
                    event.preventDefault();
                    download(event.currentTarget.getAttribute("href"), `${job.name || "job"}-step${c.step}.safetensors`).catch(
                      (err) => (notice.textContent = `Download failed: ${err.message}`),
                    );
                  },
                },
                "Download",
              ),
            ),
          ),
        ),
      );
      if (!page.items.length) checkpointsBody.append(h("tr", {}, h("td", { colspan: "6", class: "muted" }, "None yet.")));
    } catch (err) {
      if (err.name !== "AbortError" && !stopped) notice.textContent = `Could not load checkpoints: ${err.message}`;
    }
  }

  // --- predict -----------------------------------------------------------------------------------------
  function predictForm() {
    predictInput = h("textarea", {
      id: "predict-input",
      rows: "4",
      spellcheck: "false",
      "data-testid": "predict-input",
      "aria-describedby": "predict-help",
    });
    predictCheckpoint = h(
      "select",
      { id: "predict-checkpoint", "data-testid": "predict-checkpoint" },
      h("option", { value: "best" }, "best"),
      h("option", { value: "latest" }, "latest"),
    );
    predictOutput = h("div", { "data-testid": "predict-output", "aria-live": "polite" });
    return h(
      "form",
      { class: "card", "aria-labelledby": "predict-title", onsubmit: predict },
      h("h2", { id: "predict-title" }, "Predict"),
      h("label", { for: "predict-input" }, "Input rows (JSON)"),
      predictInput,
      h("p", { id: "predict-help", class: "muted" }, "A list of rows, one list of numbers per sample."),
      h(
        "div",
        { class: "row" },
        h("label", { for: "predict-checkpoint" }, "Checkpoint"),
        predictCheckpoint,
        h("button", { type: "submit", "data-testid": "predict-submit" }, "Predict"),
      ),
      predictOutput,
    );
  }

  function predictDefaults() {
    const shape = job.report?.input_shape;
    const width = Array.isArray(shape) ? shape.reduce((a, b) => a * b, 1) : 0;
    if (width > 0 && width <= 64 && !predictInput.value) predictInput.value = JSON.stringify([new Array(width).fill(0)]);
  }

  async function predict(event) {
    event.preventDefault();
    let inputs;
    try {
      inputs = JSON.parse(predictInput.value);
    } catch (err) {
      predictOutput.replaceChildren(h("p", { class: "error" }, `Not JSON: ${err.message}`));
      return;
    }
    predictOutput.replaceChildren(h("p", { class: "muted" }, "Predicting…"));
    try {
      const out = await api.predict({ job_id: jobId, checkpoint: predictCheckpoint.value, inputs });
      predictOutput.replaceChildren(predictionTable(out));
    } catch (err) {
      fill(
        predictOutput,
        h("p", { class: "error" }, err.message),
        err.errors?.length ? errorList(err.errors, "predict-errors") : null,
      );
    }
  }

  // --- start -------------------------------------------------------------------------------------------
  (async () => {
    try {
      showJob(await api.getJob(jobId, signal));
    } catch (err) {
      if (err.name === "AbortError" || stopped) return;
      main.replaceChildren(
        h(
          "section",
          {},
          h("h1", {}, err.status === 404 ? "No such job" : "Could not load the job"),
          h("p", { role: "alert" }, err.status === 404 ? `There is no job ${jobId}.` : err.message),
          h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs")),
        ),
      );
      return;
    }
    main.focus();
    if (!FINISHED.has(job.status)) pollTimer = setTimeout(pollJob, POLL_MS);
    try {
      const status = await loadMetrics();
      if (!FINISHED.has(status) && !FINISHED.has(job.status)) followMetrics();
    } catch (err) {
      if (err.name !== "AbortError" && !stopped) notice.textContent = `Could not load metrics: ${err.message}`;
    }
  })();

  return () => {
    stopped = true;
    clearTimeout(pollTimer);
    controller.abort();
    Object.values(charts).forEach((c) => c.destroy());
  };
}

function predictionTable(out) {
  const probs = out.probabilities;
  const classes = out.classes;
  const header = ["#", "Prediction", ...(probs && classes ? classes.map((c) => `P(${c})`) : [])];
  return h(
    "table",
    { "data-testid": "predictions" },
    h("caption", { class: "muted" }, `Checkpoint ${out.checkpoint_id ?? ""}`),
    h("thead", {}, h("tr", {}, header.map((t) => h("th", { scope: "col" }, t)))),
    h(
      "tbody",
      {},
      out.predictions.map((p, i) =>
        h(
          "tr",
          {},
          h("td", { class: "num" }, String(i)),
          h("td", { class: "num" }, Array.isArray(p) ? p.map(formatNumber).join(", ") : formatNumber(p)),
          probs ? probs[i].map((v) => h("td", { class: "num" }, v.toFixed(3))) : null,
        ),
      ),
    ),
  );
}
