"""The web dashboard end to end: Debian's headless chromium (Playwright) against a live embedded server.

Covers what a user does in the browser: enter the API key, submit a spec from the submit page, watch the
loss curve grow while the job runs, see a shape error at its JSON path before submitting, cancel a running
job, filter the jobs list, compare picked jobs, follow a sweep's trials, export and register a model from
its job page, move its aliases on the models page. Every test also asserts the page logged no console error.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import onnx
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright

from service.spec import SEED_EXAMPLE
from tests.conftest import LiveServer, start_server, stop_server

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
# The pictures in docs/ are refreshed only on request (TRAINSERVE_DOCS_SCREENSHOTS=1): a test run leaves the
# checkout as it found it.
SCREENSHOT = (Path(__file__).resolve().parent.parent / "docs" if os.environ.get("TRAINSERVE_DOCS_SCREENSHOTS") == "1"
              else Path(tempfile.gettempdir()) / "trainserve-screenshots") / "dashboard-job.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous: a shared 2-core machine can run the worker many times slower than an idle one.
JOB_TIMEOUT_MS = 240_000
# For a page waiting on one request the server may answer slowly when the machine is busy.
SERVER_MS = 30_000


def seed_spec(n_samples: int = 128, **training: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["training"].update(training)
    spec["data"]["n_samples"] = n_samples
    return spec


# The seed example made to run for a few seconds on an idle machine, so its curve can be watched growing:
# 26 steps an epoch, each step logged; few epochs, as each one ends with database writes. A validation
# split adds the per-epoch curves.
LONG_EPOCHS = 100
LONG_SEED = seed_spec(n_samples=1024, epochs=LONG_EPOCHS, batch_size=32, log_every_steps=1, validation_split=0.2,
                      checkpoint={"every_epochs": 25})


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-browser.sh (as root) to install Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Dashboard:
    page: Page
    server: LiveServer
    console_errors: list[str] = field(default_factory=list)

    def open(self, route: str = "#/jobs") -> None:
        self.page.goto(f"{self.server.url}/{route}")

    def log_in(self, key: str | None = None) -> None:
        self.page.get_by_test_id("key-input").fill(key or self.server.api_key)
        self.page.get_by_test_id("key-save").click()

    def edit_spec(self, spec: dict[str, Any]) -> None:
        self.page.get_by_test_id("spec-input").fill(json.dumps(spec, indent=2))

    def loss_points(self) -> int:
        return int(self.page.get_by_test_id("chart-loss").get_attribute("data-points") or 0)


@pytest.fixture(scope="module")
def cpu_only_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """An embedded server whose worker sees no CUDA device, on any host: the waiting-reason test needs a gpu
    queue nobody consumes, and the others train on the CPU anyway."""
    server = start_server(tmp_path_factory.mktemp("dashboard") / "home", env_extra={"CUDA_VISIBLE_DEVICES": ""})
    yield server
    stop_server(server.proc)


@pytest.fixture
def dashboard(browser: Browser, cpu_only_server: LiveServer) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    dash = Dashboard(page=page, server=cpu_only_server)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            dash.console_errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: dash.console_errors.append(f"uncaught: {exc}"))
    yield dash
    context.close()


@pytest.mark.timeout(600)
def test_seed_example_submitted_from_the_page_draws_live_curves_until_it_succeeds(dashboard: Dashboard) -> None:
    page = dashboard.page
    dashboard.open("#/submit")
    expect(page.get_by_test_id("key-form")).to_be_visible()  # no key stored yet
    dashboard.log_in()

    page.get_by_test_id("example-select").select_option("seed")
    assert json.loads(page.get_by_test_id("spec-input").input_value()) == SEED_EXAMPLE
    dashboard.edit_spec(LONG_SEED)
    expect(page.get_by_test_id("validation-status")).to_contain_text("Valid")
    expect(page.locator('[data-testid="layer-table"] tbody tr')).to_have_count(5)
    page.get_by_test_id("submit-job").click()

    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=chart-loss]').dataset.points) > 0", timeout=JOB_TIMEOUT_MS
    )
    first = dashboard.loss_points()
    page.wait_for_function(
        "n => Number(document.querySelector('[data-testid=chart-loss]').dataset.points) > n",
        arg=first,
        timeout=JOB_TIMEOUT_MS,
    )
    assert dashboard.loss_points() > first

    expect(page.get_by_test_id("job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    # Every point the server holds ends up on the charts: the history and the live stream join without gaps.
    with dashboard.server.client() as client:
        points = client.get(f"/jobs/{job_id}/metrics", params={"names": "train_loss,val_loss,lr"}).json()["points"]
    counts = {name: sum(p["name"] == name for p in points) for name in ("train_loss", "val_loss", "lr")}
    assert counts["val_loss"] == LONG_EPOCHS
    loss_total = str(counts["train_loss"] + counts["val_loss"])
    expect(page.get_by_test_id("chart-loss")).to_have_attribute("data-points", loss_total, timeout=10_000)
    expect(page.get_by_test_id("chart-lr")).to_have_attribute("data-points", str(counts["lr"]))
    expect(page.get_by_test_id("chart-val")).not_to_have_attribute("data-points", "0")
    expect(page.locator('[data-testid="checkpoint-rows"] [data-testid="checkpoint-download"]').first).to_be_visible()
    expect(page.get_by_test_id("cancel-job")).to_be_hidden()

    page.get_by_test_id("predict-input").fill(json.dumps([[0.1] * 32, [-0.2] * 32]))
    page.get_by_test_id("predict-submit").click()
    expect(page.locator('[data-testid="predictions"] tbody tr')).to_have_count(2)

    page.get_by_test_id("log-scale").check()
    page.get_by_test_id("smoothing").fill("0.8")
    expect(page.locator("output[for=smoothing]")).to_have_text("0.80")
    page.wait_for_timeout(300)  # a few animation frames for the redraw before the picture
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The jobs page lists it under its status filter and not under another.
    page.get_by_test_id("nav-jobs").click()
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_have_attribute("data-status", "succeeded")
    page.get_by_test_id("status-filter").select_option("cancelled")
    expect(row).to_have_count(0)
    page.get_by_test_id("status-filter").select_option("succeeded")
    expect(row).to_have_count(1)

    assert dashboard.console_errors == []


def test_a_mismatched_layer_is_shown_at_its_json_path_before_submitting(dashboard: Dashboard) -> None:
    page = dashboard.page
    dashboard.open("#/submit")
    dashboard.log_in()
    spec = seed_spec()
    spec["model"]["layers"][2]["in_features"] = 99
    with dashboard.server.client() as client:
        jobs_before = client.get("/jobs").json()["items"]

    dashboard.edit_spec(spec)

    error = page.locator('[data-testid="spec-errors"] li[data-loc="model.layers[2].in_features"]')
    expect(error).to_contain_text("64")  # what the previous layer really outputs
    expect(page.locator('[data-testid="layer-table"] tr[data-layer-index="2"]')).to_have_class("has-error")
    expect(page.locator('[data-testid="layer-table"] tr.has-error')).to_have_count(1)
    expect(page.get_by_test_id("submit-job")).to_be_disabled()
    # The error's path selects the offending value in the editor.
    error.get_by_role("button").click()
    selected = page.get_by_test_id("spec-input").evaluate("t => t.value.slice(t.selectionStart, t.selectionEnd)")
    assert selected == "99"

    spec["model"]["layers"][2]["in_features"] = 64
    dashboard.edit_spec(spec)
    expect(page.get_by_test_id("validation-status")).to_contain_text("Valid")
    expect(page.get_by_test_id("spec-errors")).to_have_count(0)
    expect(page.get_by_test_id("submit-job")).to_be_enabled()
    with dashboard.server.client() as client:
        assert client.get("/jobs").json()["items"] == jobs_before  # nothing was submitted
    assert dashboard.console_errors == []


def test_a_running_job_is_cancelled_from_its_page(dashboard: Dashboard) -> None:
    page = dashboard.page
    # Runs for minutes unless cancelled.
    spec = seed_spec(n_samples=1024, epochs=10_000, batch_size=8, log_every_steps=10, checkpoint={"every_epochs": 1000})
    with dashboard.server.client() as client:
        response = client.post("/jobs", json=spec)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        try:
            dashboard.open(f"#/jobs/{job_id}")
            dashboard.log_in()
            expect(page.get_by_test_id("job-status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
            page.get_by_test_id("cancel-job").click()
            expect(page.get_by_test_id("job-status")).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
            expect(page.get_by_test_id("cancel-job")).to_be_hidden()
            assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
        finally:
            # A failed run must not leave the shared worker busy for the rest of the session.
            if client.get(f"/jobs/{job_id}").json()["status"] in ("queued", "running"):
                client.post(f"/jobs/{job_id}/cancel")
    assert dashboard.console_errors == []


def test_a_refused_key_brings_the_key_form_back(dashboard: Dashboard) -> None:
    page = dashboard.page
    dashboard.open("#/jobs")
    dashboard.log_in("not-a-key")
    expect(page.get_by_test_id("key-form").get_by_role("alert")).to_contain_text("401")
    assert page.evaluate("() => localStorage.getItem('trainserve.apiKey')") is None

    dashboard.log_in()
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    expect(page.get_by_test_id("key-form")).to_have_count(0)
    # The browser itself reports the refused request; nothing else may reach the console.
    assert [e for e in dashboard.console_errors if "401" not in e] == []


def test_a_cuda_job_on_a_host_without_cuda_shows_why_it_waits(dashboard: Dashboard) -> None:
    page = dashboard.page
    with dashboard.server.client() as client:
        job_id = client.post("/jobs", json=seed_spec(device="cuda")).json()["id"]
        try:
            dashboard.open(f"#/jobs/{job_id}")
            dashboard.log_in()
            expect(page.get_by_test_id("job-status")).to_have_text("queued")
            facts = page.get_by_test_id("job-facts")
            expect(facts).to_contain_text("gpu")
            expect(facts).to_contain_text("no live worker consumes the 'gpu' queue")
        finally:
            client.post(f"/jobs/{job_id}/cancel")
    assert dashboard.console_errors == []


def finished_jobs(server: LiveServer, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with server.client() as client:
        ids = [client.post("/jobs", json=spec).json()["id"] for spec in specs]
    jobs = [server.wait_for_job(i, timeout=JOB_TIMEOUT_MS / 1000) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * len(jobs), [j["error"] for j in jobs]
    return jobs


def test_jobs_picked_in_the_list_open_side_by_side_with_what_differs(dashboard: Dashboard) -> None:
    page = dashboard.page
    specs = [seed_spec(epochs=3), seed_spec(epochs=3)]
    specs[1]["optimizer"]["lr"] = 0.01
    jobs = finished_jobs(dashboard.server, specs)
    ids = [j["id"] for j in jobs]

    dashboard.open("#/jobs")
    dashboard.log_in()
    expect(page.get_by_test_id("compare-jobs")).to_be_disabled()
    for job_id in ids:
        page.locator(f'tr[data-job-id="{job_id}"] [data-testid="compare-pick"]').check()
    page.get_by_test_id("compare-jobs").click()
    page.wait_for_url(f"**/#/compare?ids={ids[0]},{ids[1]}")

    lr = page.locator('[data-testid="spec-diff"] tr[data-path="optimizer.lr"] td')
    expect(lr).to_have_text(["optimizer.lr", "0.001", "0.01"])  # each job's value, in the order picked
    expect(page.locator('[data-testid="spec-diff"] tr[data-path="training.epochs"]')).to_have_count(0)
    # Every point of both runs is on the overlaid chart.
    with dashboard.server.client() as client:
        total = sum(len(client.get(f"/jobs/{i}/metrics", params={"names": "train_loss"}).json()["points"]) for i in ids)
    expect(page.get_by_test_id("compare-chart-train_loss")).to_have_attribute("data-points", str(total))
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-compare.png")), full_page=True)
    page.locator(f'[data-testid="compare-jobs"] tr[data-job-id="{ids[1]}"] a').click()
    page.wait_for_url(f"**/#/jobs/{ids[1]}")
    assert dashboard.console_errors == []


def test_a_sweep_lists_its_trials_best_first_with_their_curves_and_parameters(dashboard: Dashboard) -> None:
    page = dashboard.page
    body = {
        "name": "dash-sweep",
        "spec": seed_spec(epochs=3, validation_split=0.25),
        "space": {"optimizer.lr": {"choice": [0.0001, 0.01]}},
        "search": {"method": "grid", "trials": 2, "parallel": 1, "seed": 0},
        "objective": {"metric": "val_loss", "mode": "min"},
    }
    with dashboard.server.client() as client:
        response = client.post("/sweeps", json=body)
        assert response.status_code == 201, response.text
        sweep_id = response.json()["id"]

    dashboard.open("#/sweeps")
    dashboard.log_in()
    page.locator(f'tr[data-sweep-id="{sweep_id}"] [data-testid="sweep-link"]').click()
    page.wait_for_url(f"**/#/sweeps/{sweep_id}")
    rows = page.locator('[data-testid="trials"] tbody tr')
    expect(rows.locator("[data-testid=trial-value]").nth(1)).not_to_be_empty(timeout=JOB_TIMEOUT_MS)
    with dashboard.server.client() as client:
        sweep = client.get(f"/sweeps/{sweep_id}").json()
    best = min(sweep["trials"], key=lambda t: t["value"])
    expect(rows.first).to_have_attribute("data-job-id", best["job_id"])  # best first
    expect(page.get_by_test_id("sweep-chart-val_loss")).not_to_have_attribute("data-points", "0")
    expect(page.locator('[data-testid="param-plot"][data-param="optimizer.lr"]')).to_have_attribute("data-points", "2")
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-sweep.png")), full_page=True)
    rows.first.get_by_test_id("trial-link").click()
    page.wait_for_url(f"**/#/jobs/{best['job_id']}")
    expect(page.get_by_test_id("job-sweep")).to_be_visible()
    assert dashboard.console_errors == []


def test_the_models_page_shows_versions_and_aliases(dashboard: Dashboard) -> None:
    page = dashboard.page
    job = finished_jobs(dashboard.server, [seed_spec(epochs=2)])[0]
    name = f"dash-model-{job['id'][:6]}"
    with dashboard.server.client() as client:
        for _ in range(2):
            response = client.post("/models", json={"name": name, "job_id": job["id"], "checkpoint": "latest"})
            assert response.status_code == 201, response.text
        assert client.put(f"/models/{name}/aliases/prod", json={"version": 1}).status_code == 200

    dashboard.open("#/models")
    dashboard.log_in()
    card = page.locator(f'[data-model="{name}"]')
    expect(card.locator('[data-testid="model-versions"] tbody tr')).to_have_count(2)
    expect(card.locator('[data-testid="model-aliases"] li')).to_have_count(1)
    expect(card.locator('[data-testid="model-aliases"] li[data-alias="prod"]')).to_contain_text(f"{name}@prod → v1")
    expect(card.locator('tr[data-version="1"] .tag')).to_have_text("prod")
    # The seed example's data has no names: 32 values in, one value out.
    expect(card.locator('tr[data-version="2"] [data-testid="version-signature"]')).to_have_text("[32] → 1 value")
    card.locator('tr[data-version="2"] [data-testid="version-job"]').click()
    page.wait_for_url(f"**/#/jobs/{job['id']}")
    assert dashboard.console_errors == []


def iris_spec() -> dict[str, Any]:
    """A classifier on data with named features and classes, with a validation split so `best` exists."""
    return {
        "name": "dash-iris",
        "model": {"layers": [{"type": "Linear", "out_features": 8}, {"type": "ReLU"},
                             {"type": "Linear", "out_features": 3}]},
        "loss": {"type": "CrossEntropyLoss"},
        "optimizer": {"type": "Adam", "lr": 0.05},
        "training": {"epochs": 4, "batch_size": 32, "validation_split": 0.2, "normalize": True, "seed": 1},
        "data": {"source": "builtin", "name": "iris"},
    }


def downloaded(page: Page, link: Locator) -> bytes:
    """Clicks a download link (fetched with the key, handed to the browser as a blob) and returns the file."""
    with page.expect_download(timeout=120_000) as info:
        link.click()
    path = info.value.path()
    return Path(path).read_bytes()


def test_a_finished_job_is_exported_and_registered_from_its_page_then_aliased_on_the_models_page(
    dashboard: Dashboard,
) -> None:
    page = dashboard.page
    job = finished_jobs(dashboard.server, [iris_spec()])[0]
    assert job["best"] is not None
    name = f"dash-iris-{job['id'][:6]}"

    dashboard.open(f"#/jobs/{job['id']}")
    dashboard.log_in()
    signature = page.get_by_test_id("signature")
    # The first signature read loads the data set's names: slow on a busy machine.
    expect(signature).to_contain_text("[4]", timeout=SERVER_MS)
    expect(signature).to_contain_text("sepal length (cm)")
    expect(signature).to_contain_text("classes: setosa, versicolor, virginica")

    # The best checkpoint as ONNX: a model onnx reads, taking rows of 4 values with any batch size.
    raw = downloaded(page, page.get_by_test_id("export-best-onnx"))
    model = onnx.load_model_from_string(raw)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [4] and not dims[0].dim_value
    assert downloaded(page, page.get_by_test_id("export-latest-pt2"))  # non-empty

    page.get_by_test_id("register-name").fill(name)
    page.get_by_test_id("register-checkpoint").select_option("best")
    page.get_by_test_id("register-submit").click()
    result = page.get_by_test_id("register-result")
    expect(result).to_contain_text(f"{name}:1", timeout=SERVER_MS)
    with dashboard.server.client() as client:
        version = client.get(f"/models/{name}/versions/1").json()
    assert version["checkpoint_id"] == job["best"]["checkpoint_id"]  # "best" pinned as the best epoch's id

    result.get_by_test_id("register-models-link").click()
    page.wait_for_url("**/#/models")
    card = page.locator(f'[data-model="{name}"]')
    expect(card.locator('tr[data-version="1"] [data-testid="version-signature"]')).to_contain_text("3 classes",
                                                                                                   timeout=SERVER_MS)
    expect(card.get_by_test_id("model-aliases")).to_have_text("No aliases.")
    card.get_by_test_id("alias-name").fill("prod")
    card.get_by_test_id("alias-version").select_option("1")
    card.get_by_test_id("alias-set").click()
    expect(card.locator('[data-testid="model-aliases"] li[data-alias="prod"]')).to_contain_text(f"{name}@prod → v1",
                                                                                                 timeout=SERVER_MS)
    expect(card.locator('tr[data-version="1"] .tag')).to_have_text("prod")
    with dashboard.server.client() as client:
        assert client.get(f"/models/{name}").json()["aliases"] == {"prod": 1}

    assert downloaded(page, card.locator('tr[data-version="1"] [data-testid="version-export-onnx"]')) == raw
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-models.png")), full_page=True)

    card.locator('[data-alias="prod"] [data-testid="alias-delete"]').click()
    expect(card.get_by_test_id("model-aliases")).to_have_text("No aliases.", timeout=SERVER_MS)
    with dashboard.server.client() as client:
        assert client.get(f"/models/{name}").json()["aliases"] == {}
    assert dashboard.console_errors == []
