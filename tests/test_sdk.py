"""The Python SDK (`sdk/`, import `trainserve`): spec builders, error mapping, retries, and the live server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trainserve as ts
from trainserve.client import _iter_sse, resolve_api_key, resolve_url, spec_to_body
from trainserve.errors import error_from_response

from service.spec import SEED_EXAMPLE, JobSpec
from tests.conftest import LiveServer, start_server, stop_server

# --- spec builders ------------------------------------------------------------------------------------


def seed_spec() -> ts.Spec:
    return ts.Spec(
        name="seed-mlp",
        layers=[ts.Linear(32, 64), ts.ReLU(), ts.Linear(32), ts.ReLU(), ts.Linear(1)],
        loss=ts.MSELoss(),
        optimizer=ts.Adam(lr=0.001),
        training=ts.Training(epochs=100, batch_size=128, seed=0, log_every_steps=1),
        data=ts.Synthetic(kind="randn", n_samples=128, n_features=32, n_targets=1),
    )


def test_builders_reproduce_the_seed_example_json() -> None:
    assert seed_spec().to_dict() == SEED_EXAMPLE
    JobSpec.model_validate(seed_spec().to_dict())


def test_every_builder_produces_a_spec_the_server_schema_accepts() -> None:
    layers: list[ts.SpecPart] = [
        ts.Conv2d(8, 3, padding="same", init="kaiming_normal"), ts.BatchNorm2d(momentum=None), ts.ReLU(),
        ts.MaxPool2d(2), ts.Conv2d(8, 16, (3, 3), stride=1), ts.AvgPool2d(2, count_include_pad=False), ts.GELU("tanh"),
        ts.Flatten(), ts.Dropout(0.1), ts.Linear(32, bias=False), ts.LayerNorm(32), ts.LeakyReLU(0.2), ts.PReLU(),
        ts.ELU(), ts.SiLU(), ts.Tanh(), ts.Sigmoid(), ts.Identity(), ts.Linear(out_features=10), ts.LogSoftmax(dim=1),
    ]
    spec = ts.Spec(
        layers=layers, init="xavier_uniform", loss=ts.NLLLoss(), optimizer=ts.SGD(lr=0.1, momentum=0.9, nesterov=True),
        scheduler=ts.OneCycleLR(max_lr=0.5),
        training=ts.Training(epochs=2, validation_split=0.2, early_stopping=ts.EarlyStopping(patience=2),
                             checkpoint=ts.CheckpointPolicy(keep_last=1), device="cpu", precision="32"),
        data=ts.Builtin("digits", input_shape=[1, 8, 8]),
    )
    parsed = JobSpec.model_validate(spec.to_dict())
    assert [layer.type for layer in parsed.model.layers] == [type(layer).__name__ for layer in layers]
    assert parsed.model.layers[1].momentum is None  # type: ignore[union-attr]  # explicit None is sent
    assert parsed.model.layers[4].in_channels == 8  # type: ignore[union-attr]  # PyTorch's (in, out, k)
    assert spec.to_dict()["model"]["init"] == "xavier_uniform"

    for loss in (ts.L1Loss(), ts.SmoothL1Loss(beta=0.5), ts.HuberLoss(delta=2.0), ts.BCEWithLogitsLoss(pos_weight=[2.0]),
                 ts.CrossEntropyLoss(label_smoothing=0.1)):
        for opt in (ts.AdamW(weight_decay=0.1), ts.RMSprop(lr=0.01, centered=True), ts.Adam(betas=(0.8, 0.9))):
            for sched in (ts.StepLR(5), ts.ExponentialLR(0.9, interval="step"), ts.CosineAnnealingLR(T_max=10),
                          ts.ReduceLROnPlateau(patience=1)):
                body = ts.Spec(layers=[ts.Linear(1)], loss=loss, optimizer=opt, scheduler=sched,
                               data=ts.DatasetSource("d1", target="y")).to_dict()
                JobSpec.model_validate(body)


def test_builders_send_only_what_was_given_and_accept_arrays() -> None:
    np = pytest.importorskip("numpy")
    data = ts.Inline(np.zeros((4, 2)), np.arange(4.0))
    assert data.to_dict() == {"source": "inline", "x": [[0.0, 0.0]] * 4, "y": [0.0, 1.0, 2.0, 3.0]}
    assert ts.Adam().to_dict() == {"type": "Adam"}
    assert ts.Linear(64).to_dict() == {"type": "Linear", "out_features": 64}
    with pytest.raises(TypeError):
        ts.Linear()
    # Dicts mix freely with builders.
    body = ts.Spec(layers=[{"type": "Linear", "out_features": 1}], loss={"type": "MSELoss"}, optimizer=ts.SGD(),
                   data=data).to_dict()
    JobSpec.model_validate(body)


def test_spec_to_body_accepts_paths_dicts_builders_and_pydantic_models(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(SEED_EXAMPLE))
    assert spec_to_body(path) == SEED_EXAMPLE
    assert spec_to_body(str(path)) == SEED_EXAMPLE
    assert spec_to_body(SEED_EXAMPLE) == SEED_EXAMPLE
    assert spec_to_body(seed_spec()) == SEED_EXAMPLE
    # A server-side model sends what the caller set, so the server keeps filling its own defaults.
    assert spec_to_body(JobSpec.model_validate(SEED_EXAMPLE)) == SEED_EXAMPLE


# --- configuration ------------------------------------------------------------------------------------


def test_client_reads_url_and_key_from_env_then_home_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINSERVE_URL", raising=False)
    monkeypatch.delenv("TRAINSERVE_API_KEY", raising=False)
    monkeypatch.setenv("TRAINSERVE_HOME", str(tmp_path))
    assert resolve_url() == "http://127.0.0.1:8000"
    assert resolve_api_key() is None
    (tmp_path / "api-key").write_text("from-file\n")
    assert resolve_api_key() == "from-file"
    monkeypatch.setenv("TRAINSERVE_API_KEY", "from-env")
    monkeypatch.setenv("TRAINSERVE_URL", "http://example.test:9/")
    assert resolve_api_key() == "from-env"
    assert resolve_url() == "http://example.test:9"
    assert resolve_api_key("given") == "given"
    client = ts.Client()
    assert client.url == "http://example.test:9" and client.api_key == "from-env"
    client.close()


# --- error mapping ------------------------------------------------------------------------------------


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers, request=httpx.Request("GET", "http://x/jobs"))


@pytest.mark.parametrize(
    ("status", "type_", "cls"),
    [
        (422, "validation_error", ts.ValidationError), (404, "not_found", ts.NotFound), (409, "conflict", ts.Conflict),
        (401, "unauthorized", ts.AuthError), (413, "payload_too_large", ts.PayloadTooLarge),
        (429, "rate_limited", ts.RateLimited), (503, "unavailable", ts.ServiceUnavailable),
        (500, "internal_error", ts.ServerError),
    ],
)
def test_server_error_bodies_map_to_one_exception_family(status: int, type_: str, cls: type[ts.TrainserveError]) -> None:
    body = {"type": type_, "detail": "it broke", "errors": [{"loc": "model.layers[2].in_features", "msg": "expected 64"}]}
    exc = error_from_response(_answer(status, body, {"Retry-After": "7"}))
    assert type(exc) is cls and isinstance(exc, ts.TrainserveError)
    assert exc.errors == [("model.layers[2].in_features", "expected 64")]
    assert "model.layers[2].in_features: expected 64" in str(exc) and "it broke" in str(exc)
    if cls is ts.RateLimited:
        assert isinstance(exc, ts.RateLimited) and exc.retry_after == 7.0


# --- retries ------------------------------------------------------------------------------------------


def _job_body(job_id: str = "j1") -> dict[str, Any]:
    return {"id": job_id, "status": "queued"}


def test_create_retries_a_dropped_connection_with_the_same_idempotency_key() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        if len(seen) == 1:
            raise httpx.ReadError("connection reset", request=request)
        if len(seen) == 2:
            return httpx.Response(503, json={"type": "unavailable", "detail": "busy", "errors": []})
        return httpx.Response(201, json=_job_body())

    http = httpx.Client(base_url="http://x", transport=httpx.MockTransport(handler))
    client = ts.Client("http://x", "k", retries=3, backoff=0.001, http=http)
    assert client.jobs.create(SEED_EXAMPLE).id == "j1"
    assert len(seen) == 3 and len(set(seen)) == 1


def test_a_non_idempotent_call_is_not_retried_once_sent_but_a_refused_connect_is() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        raise httpx.ReadError("reset after sending", request=request)

    http = httpx.Client(base_url="http://x", transport=httpx.MockTransport(handler))
    client = ts.Client("http://x", "k", retries=3, backoff=0.001, http=http)
    with pytest.raises(ts.ConnectionFailed):
        client.jobs.cancel("j1")
    assert calls == ["/jobs/j1/cancel", "/jobs/j1/cancel"]  # one refused (retried), one sent (not retried)


@pytest.mark.parametrize("kind", ["jobs", "sweeps"])
def test_wait_polls_until_finished_and_a_timeout_names_what_is_still_going(kind: str) -> None:
    answers = {"jobs": ["queued", "running", "succeeded"], "sweeps": ["running", "running", "succeeded"]}[kind]
    polls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        polls.append(request.url.path)
        status = answers[min(len(polls), len(answers)) - 1] if request.url.path.endswith("/x1") else "running"
        return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[1], "status": status})

    http = httpx.Client(base_url="http://x", transport=httpx.MockTransport(handler))
    client = ts.Client("http://x", "k", http=http)
    resource = client.jobs if kind == "jobs" else client.sweeps

    finished = resource.wait("x1", poll_interval=0.001, progress=False)
    assert finished.status == "succeeded" and polls == [f"/{kind}/x1"] * 3
    # Still running when the time is up (timeout 0: after the first answer): the error says what and where it is.
    with pytest.raises(ts.WaitTimeout, match=f"{kind[:-1]} x2 is still running after 0.0s"):
        resource.wait("x2", poll_interval=0.001, timeout=0.0, progress=False)


def test_sse_frames_parse_into_events() -> None:
    lines = ["event: points", 'data: [{"name": "train_loss", "step": 1, "value": 0.5}]', "", ": keepalive", "",
             "event: end", 'data: {"status": "succeeded"}', ""]
    assert list(_iter_sse(iter(lines))) == [
        ("points", '[{"name": "train_loss", "step": 1, "value": 0.5}]'), ("end", '{"status": "succeeded"}'),
    ]


# --- against a live server ----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("succeeded", "failed", "cancelled")


def new_tenant_key(server: LiveServer, tenant_prefix: str) -> str:
    """A key for a tenant of its own, so counts and listings see only this test's jobs."""
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--tenant", f"{tenant_prefix}-{uuid.uuid4().hex[:8]}"],
        cwd=ROOT, env=server.env, capture_output=True, text=True, check=True, timeout=60,
    )
    return done.stdout.strip().splitlines()[-1]


def long_spec(name: str = "long") -> dict[str, Any]:
    """A job that runs until cancelled (tiny steps, many of them)."""
    return {
        "name": name,
        "model": {"layers": [{"type": "Linear", "out_features": 1}]},
        "loss": {"type": "MSELoss"}, "optimizer": {"type": "SGD", "lr": 0.01},
        # Far more steps than any machine runs before the test's cancel lands (each test cancels it in a
        # finally block, so a failing test does not hold the shared worker).
        "training": {"max_steps": 5_000_000, "batch_size": 8, "log_every_steps": 5, "checkpoint": {"every_epochs": 1000}},
        "data": {"source": "synthetic", "kind": "regression", "n_samples": 64, "n_features": 2},
    }


@pytest.fixture(scope="module")
def sdk(embedded_server: LiveServer) -> Iterator[ts.Client]:
    with ts.Client(embedded_server.url, embedded_server.api_key, backoff=0.05) as client:
        yield client


@pytest.fixture(scope="module")
def seed_job(sdk: ts.Client) -> ts.Job:
    job = sdk.jobs.create(seed_spec())
    return sdk.jobs.wait(job.id, poll_interval=0.2, timeout=180)


def test_client_finds_the_key_in_trainserve_home(embedded_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINSERVE_API_KEY", raising=False)
    monkeypatch.setenv("TRAINSERVE_HOME", str(embedded_server.home))
    monkeypatch.setenv("TRAINSERVE_URL", embedded_server.url)
    with ts.Client() as client:
        assert client.api_key == embedded_server.api_key
        assert client.jobs.validate(SEED_EXAMPLE).ok


def test_seed_example_via_the_sdk_matches_the_raw_http_path(
    embedded_server: LiveServer, sdk: ts.Client, seed_job: ts.Job
) -> None:
    assert seed_job.status == "succeeded", seed_job.error
    assert seed_job.progress.step == 100 and seed_job.best is not None
    rows = [[0.1] * 32, [-0.2] * 32]

    with embedded_server.client() as http:
        raw = http.post("/jobs", json=SEED_EXAMPLE)
        assert raw.status_code == 201
        raw_job = embedded_server.wait_for_job(raw.json()["id"])
        assert raw_job["status"] == "succeeded"
        raw_points = http.get(f"/jobs/{raw_job['id']}/metrics", params={"names": "train_loss"}).json()["points"]
        raw_pred = http.post("/predict", json={"job_id": raw_job["id"], "inputs": rows}).json()

    points = sdk.jobs.metrics(seed_job.id, names=["train_loss"])
    assert [p.step for p in points] == list(range(1, 101)) == [p["step"] for p in raw_points]
    assert [p.value for p in points] == pytest.approx([p["value"] for p in raw_points], rel=1e-5)
    assert points[-1].value < points[0].value

    prediction = sdk.predict(seed_job.id, rows)
    assert len(prediction.predictions) == 2 and all(len(row) == 1 for row in prediction.predictions)
    flat = [value for row in prediction.predictions for value in row]
    assert flat == pytest.approx([value for row in raw_pred["predictions"] for value in row], rel=1e-5)
    assert prediction.checkpoint_id == seed_job.best.checkpoint_id

    np = pytest.importorskip("numpy")
    assert sdk.predict(seed_job.id, np.array(rows)).predictions == prediction.predictions

    frame = sdk.jobs.metrics(seed_job.id, names="train_loss", as_frame=True)
    assert list(frame.columns) == ["name", "step", "epoch", "value", "time"] and len(frame) == 100
    assert sdk.jobs.metrics_csv(seed_job.id, names=["train_loss"]).splitlines()[0] == "name,step,epoch,value,time"


def test_checkpoints_list_and_download(sdk: ts.Client, seed_job: ts.Job, tmp_path: Path) -> None:
    items = sdk.jobs.checkpoints(seed_job.id)
    best = [c for c in items if c.is_best]
    assert len(best) == 1 and best[0].id == seed_job.best.checkpoint_id  # type: ignore[union-attr]
    path = sdk.jobs.download(seed_job.id, "best", tmp_path / "best.safetensors")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == best[0].sha256
    # A safetensors file starts with the little-endian length of its JSON header.
    header_len = int.from_bytes(data[:8], "little")
    assert json.loads(data[8 : 8 + header_len])


def test_every_error_type_comes_from_a_real_server_answer(
    embedded_server: LiveServer, sdk: ts.Client, seed_job: ts.Job
) -> None:
    bad = json.loads(json.dumps(SEED_EXAMPLE))
    bad["model"]["layers"][2]["in_features"] = 16
    with pytest.raises(ts.ValidationError) as invalid:
        sdk.jobs.create(bad)
    assert invalid.value.status_code == 422
    assert any(loc == "model.layers[2].in_features" for loc, _ in invalid.value.errors)
    assert "model.layers[2].in_features" in str(invalid.value)

    with pytest.raises(ts.ValidationError) as wrong_width:
        sdk.predict(seed_job.id, [[0.1] * 31])
    assert "inputs[0]" in str(wrong_width.value)

    with pytest.raises(ts.NotFound):
        sdk.jobs.get("no-such-job")
    with pytest.raises(ts.Conflict):
        sdk.jobs.cancel(seed_job.id)
    with ts.Client(embedded_server.url, "not-a-key") as stranger, pytest.raises(ts.AuthError):
        stranger.jobs.get(seed_job.id)
    # Another tenant's job answers exactly as a missing one.
    with ts.Client(embedded_server.url, new_tenant_key(embedded_server, "other")) as other, pytest.raises(ts.NotFound):
        other.jobs.get(seed_job.id)

    # The shared server runs with TRAINSERVE_MAX_BODY_BYTES = 2 MiB and MAX_DATASET_BYTES = 512 KiB.
    with pytest.raises(ts.PayloadTooLarge) as too_big:
        sdk.predict(seed_job.id, [[0.123456789] * 32] * 20_000)
    assert too_big.value.status_code == 413
    csv_text = "x,y\n" + "".join(f"{i}.123456,{i}.654321\n" for i in range(60_000))
    with pytest.raises(ts.PayloadTooLarge):
        sdk.datasets.upload(csv_text.encode(), target="y", name="big.csv")


def test_rate_limited_carries_retry_after(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The shared server's limits are generous, so this one gets its own server allowing one submission a minute.
    server = start_server(tmp_path_factory.mktemp("ratelimited") / "home",
                          env_extra={"TRAINSERVE_MAX_SUBMISSIONS_PER_MINUTE": "1"})
    try:
        with ts.Client(server.url, server.api_key) as client:
            first = client.jobs.create(long_spec())
            client.jobs.cancel(first.id)
            with pytest.raises(ts.RateLimited) as limited:
                client.jobs.create(long_spec())
            assert limited.value.status_code == 429 and limited.value.retry_after is not None
            assert limited.value.retry_after > 0
    finally:
        stop_server(server.proc)


def test_list_iterates_over_every_page_newest_first(embedded_server: LiveServer) -> None:
    with ts.Client(embedded_server.url, new_tenant_key(embedded_server, "pages")) as client:
        created = []
        for i in range(5):
            job = client.jobs.create({**long_spec(f"page-{i}")})
            client.jobs.cancel(job.id)  # queued or just started: it never occupies the shared worker for long
            created.append(job.id)
        listed = [job.id for job in client.jobs.list(page_size=2)]
        assert listed == created[::-1]
        assert [job.id for job in client.jobs.list(page_size=2, max_items=3)] == created[::-1][:3]
        for job_id in created:
            client.jobs.wait(job_id, poll_interval=0.2, timeout=60)
            client.jobs.delete(job_id)
        assert list(client.jobs.list()) == []


def test_stream_metrics_yields_points_while_the_job_runs(sdk: ts.Client) -> None:
    job = sdk.jobs.create(long_spec("streamed"))
    seen: list[ts.MetricPoint] = []
    status_at_first_point = None
    try:
        for point in sdk.jobs.stream_metrics(job.id, names=["train_loss"], progress=True):
            if not seen:
                status_at_first_point = sdk.jobs.get(job.id).status
            seen.append(point)
            if len(seen) == 20:
                sdk.jobs.cancel(job.id)
    finally:
        with contextlib.suppress(ts.Conflict):
            sdk.jobs.cancel(job.id)
    # The stream ended by itself once the job was cancelled, after delivering points live and in order.
    assert status_at_first_point == "running"
    assert len(seen) >= 20 and all(p.name == "train_loss" for p in seen)
    steps = [p.step for p in seen]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert sdk.jobs.get(job.id).status == "cancelled"


class FlakyProxy:
    """A TCP proxy to the server that forwards the first request but drops its answer (the worst moment for a
    submit: the server acted, the client saw nothing), then proxies faithfully."""

    def __init__(self, upstream_port: int, drop_first: int = 1) -> None:
        self.upstream_port = upstream_port
        self.drop_left = drop_first
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            drop = self.drop_left > 0
            self.drop_left -= 1 if drop else 0
            threading.Thread(target=self._handle, args=(conn, drop), daemon=True).start()

    def _handle(self, conn: socket.socket, drop: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        if drop:
            request = self._read_request(conn)
            upstream.sendall(request)
            upstream.recv(65536)  # the server answered, so it has acted on the request
            upstream.close()
            conn.close()
            return
        threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
        self._pump(conn, upstream)

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(body) < length:
            body += conn.recv(65536)
        return head + b"\r\n\r\n" + body

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def test_a_create_retried_after_a_lost_answer_makes_one_job(embedded_server: LiveServer) -> None:
    key = new_tenant_key(embedded_server, "retry")
    proxy = FlakyProxy(int(embedded_server.url.rsplit(":", 1)[1]))
    try:
        with ts.Client(f"http://127.0.0.1:{proxy.port}", key, backoff=0.01) as client:
            job = client.jobs.create(long_spec("retried"))
            with contextlib.suppress(ts.Conflict):
                client.jobs.cancel(job.id)
            assert proxy.connections >= 2  # the first attempt really was lost
            assert [j.id for j in client.jobs.list()] == [job.id]
    finally:
        proxy.close()


def test_sdk_installs_and_imports_in_a_fresh_venv_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT / "sdk")], check=True, timeout=600,
                   capture_output=True)
    probe = (
        "import importlib.util, trainserve, sys\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is importable'\n"
        "assert 'torch' not in sys.modules\n"
        "print(trainserve.Spec(layers=[trainserve.Linear(1)], loss=trainserve.MSELoss(),"
        " optimizer=trainserve.Adam(), data=trainserve.Synthetic()).to_json())\n"
    )
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["layers"] == [{"type": "Linear", "out_features": 1}]
    assert (venv / "bin" / "trainserve").exists()


class _DroppingStream(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes], *, drop: bool) -> None:
        self.chunks = chunks
        self.drop = drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.drop:
            raise httpx.ReadError("connection dropped mid-stream")


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def test_stream_metrics_resumes_after_a_dropped_connection_without_repeating_points() -> None:
    requests: list[httpx.Request] = []

    def point(step: int) -> dict[str, Any]:
        return {"name": "train_loss", "step": step, "epoch": 1, "value": 1.0 / step, "time": None}

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if len(requests) == 1:
            chunks = [_event("status", {"status": "running", "progress": {"step": 0, "total_steps": 3}}),
                      _event("points", [point(1), point(2)])]
            return httpx.Response(200, stream=_DroppingStream(chunks, drop=True))
        chunks = [_event("points", [point(2), point(3)]), b": keep-alive\n\n", _event("end", {"status": "succeeded"})]
        return httpx.Response(200, stream=_DroppingStream(chunks, drop=False))

    http = httpx.Client(base_url="http://x", transport=httpx.MockTransport(handler))
    client = ts.Client("http://x", "k", backoff=0.001, http=http)
    steps = [p.step for p in client.jobs.stream_metrics("j1", names=["train_loss"])]
    assert steps == [1, 2, 3]
    assert len(requests) == 2 and requests[1].url.params["since_step"] == "2"
    assert requests[0].url.params["names"] == "train_loss"
