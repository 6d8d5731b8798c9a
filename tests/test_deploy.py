"""The Dockerfile and docker-compose.yml agree with the code: no container engine runs here, so they are read.

Every command they run parses with `trainserve-server`'s own argument parser, every TRAINSERVE_* they set is
a real setting, ports and health checks point where the processes listen, the files they copy and the modules
they name exist, and the image's dependencies (pyproject.toml's) cover every library the service imports.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shlex
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service import cli
from service.cli import build_parser
from service.migrate import migrate_to_head
from service.queue import QUEUES
from service.settings import Settings
from tests.conftest import ROOT

SETTING_NAMES = {f"TRAINSERVE_{name.upper()}" for name in Settings.model_fields}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def assert_cli_command(argv: list[str]) -> None:
    assert argv[0] == "trainserve-server", argv
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse exits on an unknown subcommand or option
        raise AssertionError(f"`{' '.join(argv)}` is not a valid trainserve-server command") from exc
    if getattr(args, "queues", None):
        assert set(args.queues.split(",")) <= {*QUEUES, "auto"}, argv


# Compose's "${NAME:-default}" (and "${NAME}"), read as compose does with NAME unset in the environment.
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolated(value: Any) -> str:
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def env_settings(env: dict[str, Any]) -> dict[str, str]:
    return {k: interpolated(v) for k, v in env.items() if k.startswith("TRAINSERVE_")}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- Dockerfile -----------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_cpu_and_cuda_torch_and_a_non_root_runtime() -> None:
    steps = dockerfile_instructions()
    stages = {m.group(1): i for i, (k, v) in enumerate(steps) if k == "FROM" and (m := re.search(r" AS (\S+)$", v))}
    assert {"torch-cpu", "torch-cuda", "build", "runtime"} <= set(stages), stages
    flavour_arg = next(v for k, v in steps if k == "ARG" and v.startswith("TORCH_FLAVOR="))
    assert flavour_arg == "TORCH_FLAVOR=cpu"  # the default image is the small one
    assert ("FROM", "torch-${TORCH_FLAVOR} AS build") in steps
    cpu_install = " ".join(v for k, v in steps[stages["torch-cpu"]:stages["torch-cuda"]] if k == "RUN")
    assert "download.pytorch.org/whl/cpu" in cpu_install
    runtime = steps[stages["runtime"]:]
    assert runtime[-1][0] == "CMD", "the runtime stage must be the last (the default target)"
    assert any(k == "COPY" and v.startswith("--from=build ") for k, v in runtime)
    assert not any(k == "RUN" and "pip install" in v for k, v in runtime), "the runtime stage installs nothing"
    user = [v for k, v in runtime if k == "USER"]
    assert user and user[-1] not in ("root", "0")


def test_dockerfile_copies_what_exists_and_sets_real_settings() -> None:
    steps = dockerfile_instructions()
    for keyword, value in steps:
        if keyword == "COPY" and not value.startswith("--from"):
            *sources, _dest = shlex.split(value)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        if keyword == "ENV":
            names = set(re.findall(r"(TRAINSERVE_[A-Z_]+)=", value))
            assert names <= SETTING_NAMES, names - SETTING_NAMES
    env = {m.group(1): m.group(2) for k, v in steps if k == "ENV" for m in re.finditer(r"(TRAINSERVE_\w+)=(\S+)", v)}
    exposed = {int(p) for k, v in steps if k == "EXPOSE" for p in v.split()}
    assert {int(env["TRAINSERVE_PORT"]), int(env["TRAINSERVE_WORKER_METRICS_PORT"])} == exposed
    assert env["TRAINSERVE_HOST"] == "0.0.0.0"  # reachable from outside the container
    Settings(**{k.removeprefix("TRAINSERVE_").lower(): v for k, v in env.items()})  # values the settings accept


def test_dockerfile_health_check_and_command_are_real_commands() -> None:
    steps = dockerfile_instructions()
    health = next(v for k, v in steps if k == "HEALTHCHECK")
    assert_cli_command(json.loads(health.split("CMD", 1)[1].strip()))
    assert_cli_command(json.loads(next(v for k, v in reversed(steps) if k == "CMD")))


def dockerfile_smoke_imports() -> list[str]:
    """The modules the build stage imports to prove the image has every runtime dependency."""
    commands = [v for k, v in dockerfile_instructions() if k == "RUN" and "python -c" in v and "import " in v]
    assert len(commands) == 1, commands
    code = re.search(r'-c "([^"]+)"', commands[0])
    assert code, commands[0]
    return [name.strip() for name in code.group(1).removeprefix("import ").split(",")]


def test_the_image_build_imports_the_entry_points_and_the_lazily_loaded_libraries() -> None:
    modules = dockerfile_smoke_imports()
    for name in modules:
        assert importlib.util.find_spec(name) is not None, f"the Dockerfile imports {name}, which does not exist"
    # The API's factory (`trainserve-server api` serves it), the CLI the image's CMD runs, the worker's Celery
    # app, and what export and sweeps load only when first used.
    script = pyproject()["project"]["scripts"]["trainserve-server"]
    entry_module, _, entry_function = script.partition(":")
    assert callable(getattr(importlib.import_module(entry_module), entry_function))
    assert {entry_module, "service.app", "worker.celery_app", "service.export", "service.sweeps", "onnx",
            "optuna"} <= set(modules)


# Used by the service without being imported by name, so no import statement shows them.
INDIRECT_RUNTIME_DEPENDENCIES = {
    "onnx": "torch.onnx.export writes the ONNX export with it",
    "psycopg": "postgresql:// database URLs",
    "redis": "redis:// broker URLs",
}
# Imports no process in the image makes.
NOT_IN_THE_IMAGE = {Path("service/localstack.py")}  # the local launcher tests and benchmarks use


def runtime_distributions() -> set[str]:
    """pyproject.toml's runtime dependencies with everything they require (their requested extras included)."""
    found: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found and set(req.extras) <= found[name]:
            continue
        extras = found[name] = found.get(name, set()) | set(req.extras)
        for text in metadata.requires(req.name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append(sub)
    return set(found)


def imported_libraries() -> set[str]:
    """Top-level names the image's code imports, the standard library and the project's own packages left out."""
    names: set[str] = set()
    for path in sorted(p for d in ("service", "worker", "migrations") for p in (ROOT / d).rglob("*.py")):
        if path.relative_to(ROOT) in NOT_IN_THE_IMAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "service", "worker", "migrations"}


def test_the_image_installs_every_library_the_service_uses() -> None:
    installed = runtime_distributions()
    by_module = metadata.packages_distributions()
    missing = {module for module in imported_libraries()
               if not {canonicalize_name(d) for d in by_module.get(module, [])} & installed}
    assert not missing, f"imported by service/worker/migrations but not a runtime dependency: {sorted(missing)}"
    assert set(INDIRECT_RUNTIME_DEPENDENCIES) <= installed
    for path in NOT_IN_THE_IMAGE:  # nothing the image runs may import what it leaves out
        module = ".".join(path.with_suffix("").parts)
        users = [p for p in (ROOT / "service").rglob("*.py") if re.search(rf"\b{re.escape(module)}\b", p.read_text())]
        assert users == [], users


def test_dockerignore_keeps_the_build_context_small_but_complete() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copied = {source for k, v in dockerfile_instructions() if k == "COPY" and not v.startswith("--from")
              for source in shlex.split(v)[:-1]}
    assert not copied & ignored, copied & ignored
    assert {".git", ".venv", "tests"} <= ignored


# --- docker-compose.yml ---------------------------------------------------------------------------------------


def test_compose_has_the_production_services() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "worker-gpu", "flower"} <= set(services)
    assert "pgdata" in compose()["volumes"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    for name in ("postgres", "redis", "api", "worker", "worker-gpu"):
        assert "test" in services[name]["healthcheck"], f"{name} has no health check"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "worker-gpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["flower"]["profiles"] == ["flower"]


@pytest.mark.parametrize("name", ["migrate", "api", "worker", "worker-gpu"])
def test_compose_commands_and_settings_are_real(name: str) -> None:
    service = compose()["services"][name]
    assert_cli_command(service["command"])
    health = service.get("healthcheck", {})
    if "test" in health:
        assert health["test"][0] == "CMD"
        assert_cli_command(health["test"][1:])
        assert ("--worker" in health["test"]) == (service["command"][1] == "worker")
    env = env_settings(service["environment"])
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
    Settings(**{k.removeprefix("TRAINSERVE_").lower(): v for k, v in env.items()})


def test_compose_limits_default_to_the_code_defaults() -> None:
    env = compose()["services"]["api"]["environment"]
    interpolations = {key: INTERPOLATION.fullmatch(str(value)) for key, value in env.items()}
    overridable = {key: m for key, m in interpolations.items() if m}
    assert {"TRAINSERVE_MAX_JOB_MEMORY_BYTES", "TRAINSERVE_MAX_STREAMS_PER_TENANT",
            "TRAINSERVE_MAX_RUNNING_JOBS_PER_TENANT", "TRAINSERVE_PREDICT_CACHE_SECONDS"} <= set(overridable)
    defaults = Settings()
    for key, match in overridable.items():
        assert match.group(1) == key, f"{key} reads ${{{match.group(1)}}}"  # a typo would never be set
        field = key.removeprefix("TRAINSERVE_").lower()
        assert Settings(**{field: match.group(2)}).model_dump()[field] == getattr(defaults, field), key


def test_compose_api_command_serves_the_app_factory_once_migrated(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`trainserve-server api` (compose's api command) refuses a database behind the migrations, which is why
    the migrate service runs first; at head it serves `service.app:create_app` as a factory on the settings'
    host and port."""
    import uvicorn

    served: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append((args, kwargs)))
    settings = Settings(home=tmp_path, host="0.0.0.0", port=8123)
    assert compose()["services"]["api"]["command"][1:] == ["api"]
    assert cli.cmd_api(settings) == 2 and served == []

    migrate_to_head(settings.database_url)
    assert cli.cmd_api(settings) == 0
    (target, *_), options = served[0]
    module, _, factory = target.partition(":")
    assert getattr(importlib.import_module(module), factory) is importlib.import_module("service.app").create_app
    assert options["factory"] is True
    assert (options["host"], options["port"]) == ("0.0.0.0", 8123)


def test_compose_urls_point_at_its_own_postgres_and_redis() -> None:
    services = compose()["services"]
    pg = services["postgres"]["environment"]
    env = services["api"]["environment"]
    assert env["TRAINSERVE_DATABASE_URL"] == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}")
    assert env["TRAINSERVE_BROKER_URL"].startswith("redis://redis:6379/")
    assert services["flower"]["command"][1] == f"--broker={env['TRAINSERVE_BROKER_URL']}"
    for name in ("migrate", "worker", "worker-gpu"):  # one configuration for every process
        assert services[name]["environment"] == env


def test_compose_api_port_and_scalable_workers() -> None:
    services = compose()["services"]
    settings_port = str(Settings.model_fields["port"].default)
    assert services["api"]["ports"] == [f"{settings_port}:{settings_port}"]
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        # `--scale worker=N` needs workers without fixed names or host ports.
        assert "container_name" not in worker and "ports" not in worker
        assert worker["expose"] == [str(Settings.model_fields["worker_metrics_port"].default)]


def test_compose_gpu_worker_reserves_the_gpu_and_uses_the_cuda_build() -> None:
    services = compose()["services"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert "gpu" in gpu["command"][gpu["command"].index("--queues") + 1].split(",")
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["args"]["TORCH_FLAVOR"] == "cuda" and gpu["image"] != services["worker"]["image"]
    assert services["worker"]["build"]["args"]["TORCH_FLAVOR"] == "cpu"
    cpu_queues = services["worker"]["command"][services["worker"]["command"].index("--queues") + 1]
    assert cpu_queues == "cpu", "CPU workers must never take the gpu queue"
