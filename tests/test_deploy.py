"""The Dockerfile and docker-compose.yml agree with the code: no container engine runs here, so they are read.

Every command they run parses with `trainserve-server`'s own argument parser, every TRAINSERVE_* they set is
a real setting, ports and health checks point where the processes listen, and the files they copy exist.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest
import yaml

from service.cli import build_parser
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


def env_settings(env: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in env.items() if k.startswith("TRAINSERVE_")}


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
