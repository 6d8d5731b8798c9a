"""The README's promise: `make run` from the checkout answers /healthz, and its curl walkthrough works verbatim."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

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
