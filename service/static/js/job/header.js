// The job page's header: name, status badge, cancel button, progress line, error, and the facts list.

import { api } from "../api.js";
import { FINISHED, announce, formatBest, formatDuration, formatNumber, formatTime, h, jobDuration } from "../ui.js";

export function jobHeader(page) {
  const title = h("h1", { "data-testid": "job-name" }, "Job");
  const badge = h("span", { class: "badge", "data-testid": "job-status" });
  const cancelButton = h(
    "button",
    { type: "button", class: "danger", hidden: true, "data-testid": "cancel-job", onclick: () => cancel(page, cancelButton) },
    "Cancel job",
  );
  const progress = h("progress", { max: 1, value: 0, "aria-label": "Training progress", "data-testid": "job-progress" });
  const progressText = h("span", { class: "muted" });
  const errorBox = h("p", { class: "error", role: "alert", hidden: true, "data-testid": "job-error" });
  const facts = h("dl", { class: "summary", "data-testid": "job-facts" });
  const el = [
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← Jobs")),
    h("div", { class: "page-head" }, title, cancelButton),
    h("p", { class: "status-line", role: "status", "aria-live": "polite" }, "Status: ", badge),
    h("div", { class: "row" }, progress, progressText),
    errorBox,
  ];

  function show(job) {
    title.textContent = job.name || job.id;
    badge.className = `badge badge-${job.status}`;
    badge.textContent = job.cancel_requested && !FINISHED.has(job.status) ? `${job.status} (cancelling)` : job.status;
    cancelButton.hidden = FINISHED.has(job.status) || job.cancel_requested;
    progress.value = Math.max(0, Math.min(1, job.progress?.fraction ?? 0));
    progressText.textContent = progressSummary(job);
    errorBox.hidden = !job.error;
    errorBox.textContent = job.error ? `Error: ${job.error}` : "";
    facts.replaceChildren(...factRows(job).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }
  return { el, facts, show };
}

async function cancel(page, button) {
  button.disabled = true;
  try {
    page.showJob(await api.cancelJob(page.jobId));
    announce("Cancel requested");
  } catch (err) {
    page.say(`Could not cancel: ${err.message}`);
    await page.refresh();
  } finally {
    button.disabled = false;
  }
}

function progressSummary(job) {
  const p = job.progress || {};
  return [
    p.epochs ? `epoch ${p.epoch ?? 0} / ${p.epochs}` : "",
    p.total_steps ? `step ${p.step ?? 0} / ${p.total_steps}` : "",
    p.eta_seconds && !FINISHED.has(job.status) ? `ETA ${formatDuration(p.eta_seconds)}` : "",
  ]
    .filter(Boolean)
    .join(" · ");
}

function factRows(job) {
  const lastMetrics = Object.entries(job.last_metrics || {})
    .map(([k, v]) => `${k} ${formatNumber(v)}`)
    .join(", ");
  return [
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
    trialFact(job),
  ].filter((row) => row && row[1] !== "");
}

// A sweep's trial links back to its sweep.
function trialFact(job) {
  if (!job.sweep_id) return null;
  const label = job.trial ? `trial ${job.trial.number} of the sweep` : "the sweep";
  return ["Sweep", h("a", { href: `#/sweeps/${encodeURIComponent(job.sweep_id)}`, "data-testid": "job-sweep" }, label)];
}
