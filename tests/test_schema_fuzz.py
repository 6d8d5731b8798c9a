"""Schemathesis over the whole OpenAPI schema: no input a client can send gets a 5xx, and every answer matches
the schema the API publishes (status, content type, body).

First in process (ASGI) against a fresh SQLite home with a valid key, so generated requests get past
authentication and reach the routes; jobs they create stay queued (no worker runs there). Then against a live
server with a real worker, as `schemathesis run` would: the document's examples, fuzzing, and the stateful phase
along the document's links.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import Bundle, initialize
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput, normalize_name
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.spec import SEED_EXAMPLE
from tests.conftest import LiveServer, start_server, stop_server

pytestmark = pytest.mark.timeout(300)


class FuzzTarget:
    def __init__(self, schema: schemathesis.BaseSchema, api_key: str) -> None:
        self.schema = schema
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.answered: set[tuple[str, int]] = set()  # (operation, status) of every request that passed the checks


def _clear_caches() -> None:
    from service import db, queue
    from service import settings as settings_module

    settings_module.get_settings.cache_clear()
    db.reset()
    queue.reset_producers()


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    home: Path = tmp_path_factory.mktemp("fuzz") / "home"
    with pytest.MonkeyPatch.context() as mp:
        # Only the settings module reads the environment: point it at a fresh home, then drop every cached
        # object built from the old settings (engine, sessions, producer) so the app uses this one.
        mp.setenv("TRAINSERVE_HOME", str(home))
        for name in ("TRAINSERVE_DATABASE_URL", "TRAINSERVE_BROKER_URL"):
            mp.delenv(name, raising=False)
        _clear_caches()
        from service.app import create_app
        from service.auth import create_api_key
        from service.db import get_engine, session_scope
        from service.migrate import migrate_to_head
        from service.settings import get_settings

        current = get_settings()
        current.home.mkdir(parents=True, exist_ok=True)
        migrate_to_head(current.database_url)
        with session_scope() as session:
            key = create_api_key(session, tenant="fuzz")
        app = create_app(current)
        service_log = logging.getLogger("service")
        level = service_log.level
        service_log.setLevel(logging.WARNING)  # hundreds of job.submitted lines help nobody
        try:
            yield FuzzTarget(schemathesis.openapi.from_asgi("/openapi.json", app), key)
        finally:
            service_log.setLevel(level)
            get_engine().dispose()
            _clear_caches()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 8  # per operation and generation mode: about 500 requests in all


def fuzz_operation(target: FuzzTarget, operation: schemathesis.APIOperation, mode: GenerationMode, *,
                   max_examples: int = MAX_EXAMPLES) -> None:
    """Hypothesis-driven requests to one operation; raises the shrunk failing case, if any."""

    @given(case=operation.as_strategy(generation_mode=mode, headers=target.headers))
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=target.headers, checks=CHECKS)
        target.answered.add((operation.label, response.status_code))

    run()


# schemathesis' own pytest integration (schema.parametrize / pytest.from_fixture) reads a node attribute
# pytest 9 no longer has, so the operations are walked here, each under its own Hypothesis run.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_input_gets_a_server_error_or_an_answer_outside_the_schema(
        fuzz_target: FuzzTarget, mode: GenerationMode) -> None:
    failures: list[str] = []
    labels: list[str] = []
    for result in fuzz_target.schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"--- an operation schemathesis cannot read: {result.err()}")
            continue
        operation = result.ok()
        labels.append(operation.label)
        try:
            fuzz_operation(fuzz_target, operation, mode)
        except Unsatisfiable:
            # Nothing invalid can be sent: no parameters (GET /readyz) or only free-form path strings.
            assert mode is GenerationMode.NEGATIVE, operation.label
        # schemathesis raises a group of failures; collect every operation's, not just the first one's.
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001
            failures.append(f"--- {operation.label}\n{exc}")
    assert "POST /jobs" in labels and "GET /jobs/{job_id}/metrics" in labels, labels
    assert not failures, "\n".join(failures)
    if mode is GenerationMode.POSITIVE:
        # The key was accepted, and generated specs reached the static check (stored when they pass it; how
        # many of 25 random specs do varies between runs, so a 201 is not required).
        answered = fuzz_target.answered
        assert ("GET /jobs", 200) in answered, sorted(answered)
        assert {("POST /jobs", 201), ("POST /jobs", 422)} & answered, sorted(answered)


# --- The same checks against a live server: `trainserve-server up` (API and a real worker) over HTTP, in the
# three phases a `schemathesis run` has: the document's examples, fuzzing, and stateful sequences that follow the
# document's OpenAPI links (a job created, then read, cancelled, its metrics and checkpoints listed).

# Whatever the fuzzer submits is tiny (the seed example still fits), so the worker finishes each job in moments.
TINY_JOBS = {
    "TRAINSERVE_MAX_PARAMETERS": "20000",
    "TRAINSERVE_MAX_EPOCHS": "100",
    "TRAINSERVE_MAX_STEPS": "200",
    "TRAINSERVE_MAX_ROWS": "2000",
    "TRAINSERVE_MAX_SYNTHETIC_FEATURES": "64",
    "TRAINSERVE_MAX_SYNTHETIC_TARGETS": "8",
    "TRAINSERVE_MAX_LAYERS": "8",
    "TRAINSERVE_MAX_SWEEP_TRIALS": "2",
    "TRAINSERVE_MAX_SWEEP_PARALLEL": "1",
    "TRAINSERVE_WORKER_METRICS_PORT": "0",
}
LIVE_MAX_EXAMPLES = 4  # per operation and mode: about 300 requests over HTTP
STATEFUL_EXAMPLES = 12  # sequences of up to 4 linked calls after the job each one starts from


@pytest.fixture(scope="module")
def live_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    server = start_server(tmp_path_factory.mktemp("live-fuzz") / "home", env_extra=TINY_JOBS)
    try:
        target = FuzzTarget(schemathesis.openapi.from_url(f"{server.url}/openapi.json"), server.api_key)
        target.schema.config.update(headers=target.headers, request_timeout=30)
        yield target
    finally:
        _cancel_unfinished(server)
        stop_server(server.proc)
        log = server.log_path.read_text(errors="replace")
        assert "Exception in ASGI application" not in log and "Traceback" not in log, server.log_tail(80)


def _cancel_unfinished(server: LiveServer) -> None:
    with server.client() as c:
        for status in ("queued", "running"):
            for job in c.get("/jobs", params={"status": status, "limit": 200}).json()["items"]:
                c.post(f"/jobs/{job['id']}/cancel")


def _operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    results = list(schema.get_all_operations())
    unreadable = [str(result.err()) for result in results if not isinstance(result, Ok)]
    assert not unreadable, unreadable
    return [result.ok() for result in results if isinstance(result, Ok)]


def examples_of(target: FuzzTarget, operation: schemathesis.APIOperation) -> None:
    """Each example the document gives this operation, sent as is."""
    for strategy in target.schema.get_strategies_from_examples(operation):
        @given(case=strategy)
        @settings(max_examples=1, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=target.headers, checks=CHECKS)
            target.answered.add((operation.label, response.status_code))

        run()


def test_live_server_answers_examples_and_fuzzed_requests_within_the_document(live_target: FuzzTarget) -> None:
    failures: list[str] = []
    for operation in _operations(live_target.schema):
        for phase in ("examples", GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                if phase == "examples":
                    examples_of(live_target, operation)
                else:
                    fuzz_operation(live_target, operation, phase, max_examples=LIVE_MAX_EXAMPLES)
            except Unsatisfiable:
                assert phase is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001
                failures.append(f"--- {operation.label} ({phase})\n{exc}")
    assert not failures, "\n".join(failures)
    # The seed example went in as a job: examples reach past the key and the static check.
    assert ("POST /jobs", 201) in live_target.answered, sorted(live_target.answered)


def test_live_server_holds_to_the_document_across_linked_calls(live_target: FuzzTarget) -> None:
    schema = live_target.schema
    linked = schema.operations_with_incoming_links()
    # The links a client follows: a job to its page, cancel, metrics and checkpoints; a sweep; a model.
    job_links = ("GET /jobs/{job_id}", "POST /jobs/{job_id}/cancel", "GET /jobs/{job_id}/metrics",
                 "GET /jobs/{job_id}/checkpoints")
    for label in (*job_links, "GET /sweeps/{sweep_id}", "GET /models/{name}"):
        assert label in linked, sorted(linked)
    headers = live_target.headers
    followed: set[tuple[str, int]] = set()
    post_jobs = schema["/jobs"]["POST"]

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        # Every sequence starts from a created job, so the links out of POST /jobs always have a job to lead
        # to, whatever rules the derandomized draw picks for this version of the document. (Without this, the
        # sequences depended on the document: a new spec field once left 30 sequences without one job.)
        @initialize(target=Bundle("created"))
        def create_a_job(self) -> StepOutput | None:
            create = getattr(self, normalize_name(f"RANDOM -> {post_jobs.label}"))
            return create(StepInput.initial(post_jobs.Case(body={}, media_type="application/json")))

        def before_call(self, case: schemathesis.Case) -> None:
            # A random body is almost never a trainable spec (fuzzing above covers those): jobs are created
            # from the document's example, so the links lead to a real job.
            if case.operation.label == "POST /jobs":
                case.body = {**SEED_EXAMPLE, "name": "stateful"}
                case.headers = {}

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": headers}

        def validate_response(self, response: Any, case: schemathesis.Case, additional_checks: Any = None,
                              **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, headers=headers)
            followed.add((case.operation.label, response.status_code))

    Machine.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=4, deadline=None,
                                  database=None, derandomize=True, suppress_health_check=list(HealthCheck)))
    # Links were followed from a created job to the job itself.
    assert ("POST /jobs", 201) in followed, sorted(followed)
    assert {(label, 200) for label in job_links} & followed, sorted(followed)
    print(sorted(followed))
