"""The README's promise: `make run` from the checkout answers /healthz, its curl walkthrough works verbatim, and
every setting, endpoint, file and server command it names exists (with the defaults it states)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.cli import build_parser
from service.settings import Settings
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(300)


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return block.split("```bash", 1)[1].rsplit("```", 1)[0]


def test_make_run_serves_and_the_readme_curl_steps_work(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "TRAINSERVE_HOME": str(home), "TRAINSERVE_PORT": str(port)}
    log = open(tmp_path / "make-run.log", "wb")
    proc = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json() == {"status": "ok"}:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert (home / "api-key").read_text().startswith("ts_")

        script = (walkthrough().replace("~/.trainserve", str(home)).replace("http://127.0.0.1:8000", url)
                  .replace("@examples/", f"@{ROOT}/examples/"))
        # Run in tmp_path so the downloaded checkpoint lands there; the examples are read from the checkout.
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr + result.stdout
        out = result.stdout
        report, _ = json.JSONDecoder().raw_decode(out)  # curl prints no newline after a JSON body
        assert report["ok"] is True and report["total_params"] == 4225
        assert 'event: end' in out and '"status":"succeeded"' in out
        assert "name,step,epoch,value,time" in out
        predictions, _ = json.JSONDecoder().raw_decode(out[out.rindex('{"job_id"'):])
        assert len(predictions["predictions"]) == 1 and len(predictions["predictions"][0]) == 1
        assert (tmp_path / "seed.safetensors").stat().st_size > 4225 * 4
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert re.search(r"trainserve stopped", (tmp_path / "make-run.log").read_text())


# --- what the README names exists: read, not run ----------------------------------------------------------------

SETTING_NAMES = {f"TRAINSERVE_{name.upper()}" for name in Settings.model_fields}
# Defaults the table says in words, not as a figure.
DEFAULTS_IN_WORDS = {"TRAINSERVE_HOME", "TRAINSERVE_DATABASE_URL", "TRAINSERVE_BROKER_URL"}
UNITS = {"k": 10**3, "M": 10**6, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def readme() -> str:
    return (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return readme().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def configuration_table() -> dict[str, str]:
    """Each TRAINSERVE_* name in the Configuration table with its default as written ("_MAX_EPOCHS" in a row
    that starts with TRAINSERVE_MAX_PARAMETERS is TRAINSERVE_MAX_EPOCHS)."""
    table: dict[str, str] = {}
    for line in section("Configuration").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`TRAINSERVE_"):
            continue
        names = [n if n.startswith("TRAINSERVE_") else f"TRAINSERVE{n}" for n in re.findall(r"`([A-Z_]+)`", cells[0])]
        defaults = cells[1].split(", ")
        for i, name in enumerate(names):
            assert name not in table, f"{name} is listed twice"
            table[name] = defaults[i] if len(defaults) == len(names) else cells[1]
    return table


def figure(text: str) -> float | str:
    """"50M" → 50e6, "8 GiB" → 8 * 2**30, "10,000" → 10000; anything else is returned as text."""
    match = re.fullmatch(r"(\d[\d,]*(?:\.\d+)?)\s*(k|M|KiB|MiB|GiB)?", text.strip("`"))
    if not match:
        return text.strip("`")
    return float(match.group(1).replace(",", "")) * UNITS.get(match.group(2) or "", 1)


def test_the_configuration_table_lists_every_setting_with_its_default() -> None:
    table = configuration_table()
    assert set(table) == SETTING_NAMES, {"missing": SETTING_NAMES - set(table), "unknown": set(table) - SETTING_NAMES}
    defaults = Settings(home=Path("/nonexistent"))
    for name, written in table.items():
        if name in DEFAULTS_IN_WORDS:
            continue
        value = getattr(defaults, name.removeprefix("TRAINSERVE_").lower())
        expected: float | str = value if isinstance(value, str) else float(value)
        assert figure(written) == expected, f"{name}: the README says {written}, the code {value}"


def readme_paths() -> set[str]:
    """Links, and backticked repository paths (examples/..., service/..., worker/engine/builders.py: name)."""
    text = readme()
    links = {m for m in re.findall(r"\]\(([^)#\s]+)\)", text) if not m.startswith("http")}
    roots = "|".join(["examples", "docs", "service", "worker", "bench", "sdk", "tests", "migrations", "scripts"])
    code = {m.split(":")[0] for m in re.findall(rf"`((?:{roots})/[^`\s]*)`?", text)}
    return links | code | {"Dockerfile", "docker-compose.yml", "pyproject.toml", "Makefile"}


def test_the_files_the_readme_names_exist() -> None:
    missing = sorted(p for p in readme_paths() if not (ROOT / p).exists())
    assert missing == []


def readme_endpoints() -> set[tuple[str, str]]:
    """(method, path) for each "GET /jobs/{id}" in the text and each curl in its code, ids as {}."""
    text = readme()
    found = {(m, p) for m, p in re.findall(r"\b(GET|POST|PUT|DELETE) (/[\w/{}.-]*)", text)}
    for line in re.findall(r"curl [^\n]*", text):
        path = re.search(r"\$(?:API|URL)(/[^\s\"'?]*)", line)
        if not path:
            continue
        method = re.search(r"-X (\w+)", line)
        method_name = method.group(1) if method else ("POST" if re.search(r"\s-d\s", line) else "GET")
        found.add((method_name, path.group(1)))
    return {(m, re.sub(r"\{[^}]*\}|\$\w+", "{}", p).rstrip("/") or "/") for m, p in found}


def routed(endpoint: tuple[str, str], routes: set[tuple[str, str]]) -> bool:
    method, path = endpoint
    parts = path.split("/")
    return any(m == method and len(r.split("/")) == len(parts)
               and all(a == b or a == "{}" or b == "{}" for a, b in zip(r.split("/"), parts)) for m, r in routes)


def test_the_endpoints_the_readme_names_exist(tmp_path: Path) -> None:
    document = create_app(Settings(home=tmp_path)).openapi()
    routes = {(method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
              for path, operations in document["paths"].items() for method in operations}
    routes |= {("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json")}  # served outside the document
    assert sorted(e for e in readme_endpoints() if not routed(e, routes)) == []
    named = readme_endpoints()
    assert {("POST", "/models"), ("GET", "/jobs/compare"), ("POST", "/sweeps")} <= named
    assert routed(("GET", "/models/{}/versions/{}/export"), named)


def test_the_server_commands_the_readme_shows_parse() -> None:
    commands = re.findall(r"trainserve-server ([a-z][^`\n#|\[]*)", readme())
    assert len(commands) >= 8
    for command in commands:
        argv = shlex.split(command.strip().rstrip(".,:;)"))
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"`trainserve-server {' '.join(argv)}` is not a valid command") from exc
