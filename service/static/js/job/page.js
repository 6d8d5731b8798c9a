// The job page (#/jobs/{id}): composes its parts (header, curves, checkpoints, predict, model, report and spec),
// loads the job, polls it until it finishes and hands each new state to every part.

import { api } from "../api.js";
import { FINISHED, h } from "../ui.js";
import { jobCheckpoints } from "./checkpoints.js";
import { jobCurves } from "./curves.js";
import { jobHeader } from "./header.js";
import { jobModel } from "./model.js";
import { predictForm } from "./predict.js";
import { jobSpec } from "./spec.js";

const POLL_MS = 2000;

// What every part shares: the job id, the page's abort signal, a notice line for failures, and showJob.
function pageContext(jobId) {
  const controller = new AbortController();
  const notice = h("p", { class: "muted", role: "status" });
  const page = {
    jobId,
    job: null,
    signal: controller.signal,
    stopped: false,
    notice,
    abort: () => controller.abort(),
    say: (text) => (notice.textContent = text),
    // A catch handler that reports a failure unless the page was left meanwhile.
    failed: (what) => (err) => {
      if (err.name !== "AbortError" && !page.stopped) page.say(`${what}: ${err.message}`);
    },
  };
  return page;
}

export function renderJob(main, jobId) {
  const page = pageContext(jobId);
  const parts = [jobHeader(page), jobCurves(page), jobCheckpoints(page), predictForm(page), jobModel(page), jobSpec(page)];
  const [header, curves, checkpoints, predict, model, spec] = parts;
  const section = h(
    "section",
    { class: "job" },
    header.el,
    page.notice,
    header.facts,
    curves.el,
    h("div", { class: "columns" }, checkpoints.el, predict.el),
    model.el,
    spec.el,
  );
  main.append(section);
  let pollTimer = null;

  page.showJob = (job) => {
    const firstTime = page.job === null;
    page.job = job;
    if (firstTime) document.title = `${job.name || job.id} · trainserve`;
    section.dataset.status = job.status;
    for (const part of parts) part.show(job, firstTime);
  };
  page.refresh = () => api.getJob(jobId, page.signal).then(page.showJob, page.failed("Could not refresh the job"));

  async function poll() {
    await page.refresh();
    if (!page.stopped && page.job && !FINISHED.has(page.job.status)) pollTimer = setTimeout(poll, POLL_MS);
  }

  start(main, page, curves, () => (pollTimer = setTimeout(poll, POLL_MS)));
  return () => {
    page.stopped = true;
    clearTimeout(pollTimer);
    page.abort();
    for (const part of parts) part.destroy?.();
  };
}

async function start(main, page, curves, startPolling) {
  try {
    page.showJob(await api.getJob(page.jobId, page.signal));
  } catch (err) {
    if (err.name !== "AbortError" && !page.stopped) main.replaceChildren(notFound(page.jobId, err));
    return;
  }
  main.focus();
  if (!FINISHED.has(page.job.status)) startPolling();
  try {
    const status = await curves.loadHistory();
    if (!FINISHED.has(status) && !FINISHED.has(page.job.status)) curves.follow();
  } catch (err) {
    page.failed("Could not load metrics")(err);
  }
}

function notFound(jobId, err) {
  const missing = err.status === 404;
  return h(
    "section",
    {},
    h("h1", {}, missing ? "No such job" : "Could not load the job"),
    h("p", { role: "alert" }, missing ? `There is no job ${jobId}.` : err.message),
    h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs")),
  );
}
