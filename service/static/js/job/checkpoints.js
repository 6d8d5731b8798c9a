// The job page's checkpoint table: step, epoch, metric, size, best/latest tags and a download link.
// Reloaded whenever the job names a new latest checkpoint.

import { api, download } from "../api.js";
import { formatNumber, h } from "../ui.js";

export function jobCheckpoints(page) {
  const body = h("tbody", { "data-testid": "checkpoint-rows" });
  let loadedFor; // the latest_checkpoint_id the table was loaded for
  const el = h(
    "section",
    { class: "card", "aria-labelledby": "ckpt-title" },
    h("h2", { id: "ckpt-title" }, "Checkpoints"),
    h(
      "table",
      { "data-testid": "checkpoints" },
      h("thead", {}, h("tr", {}, ["Step", "Epoch", "Metric", "Size", "", ""].map((t) => h("th", { scope: "col" }, t)))),
      body,
    ),
  );

  async function load(job) {
    loadedFor = job.latest_checkpoint_id;
    try {
      const result = await api.checkpoints(page.jobId, page.signal);
      body.replaceChildren(...result.items.map((c) => checkpointRow(page, c)));
      if (!result.items.length) body.append(h("tr", {}, h("td", { colspan: "6", class: "muted" }, "None yet.")));
    } catch (err) {
      page.failed("Could not load checkpoints")(err);
    }
  }

  return { el, show: (job) => job.latest_checkpoint_id !== loadedFor && load(job) };
}

function checkpointRow(page, c) {
  return h(
    "tr",
    { "data-checkpoint-id": c.id },
    h("td", { class: "num" }, formatNumber(c.step)),
    h("td", { class: "num" }, formatNumber(c.epoch)),
    h("td", {}, c.metric ? `${c.metric} ${formatNumber(c.value)}` : ""),
    h("td", { class: "num" }, `${(c.size_bytes / 1024).toFixed(1)} KiB`),
    h("td", {}, [c.is_best ? h("span", { class: "tag" }, "best") : null, c.is_latest ? h("span", { class: "tag" }, "latest") : null]),
    h("td", {}, downloadLink(page, c)),
  );
}

// An <a> with the real URL (copyable), fetched with the key on click.
function downloadLink(page, c) {
  return h(
    "a",
    {
      href: `jobs/${encodeURIComponent(page.jobId)}/checkpoints/${encodeURIComponent(c.id)}`,
      "data-testid": "checkpoint-download",
      "aria-label": `Download the checkpoint of step ${c.step}`,
      onclick: (event) => {
        event.preventDefault();
        const filename = `${page.job?.name || "job"}-step${c.step}.safetensors`;
        download(event.currentTarget.getAttribute("href"), filename).catch((err) => page.say(`Download failed: ${err.message}`));
      },
    },
    "Download",
  );
}
