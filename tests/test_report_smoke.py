"""End to end on the real sweep: `uvlm sweep spaces/smoke.yaml`, then `uvlm report`, checked in headless Chromium.

Slow (the sweep trains real tiny models): run with `pytest -m slow tests/test_report_smoke.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_report_on_the_real_smoke_sweep(tmp_path):
    env = {**os.environ, "UVLM_WORKDIR": str(tmp_path / "work")}
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    (tmp_path / "work").mkdir()  # an explicit sqlite URI must name a folder that exists (the store check refuses it)
    sweep = subprocess.run(["uvlm", "sweep", str(ROOT / "spaces" / "smoke.yaml"), "--name", "smoke-report",
                            "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    out = tmp_path / "report"
    report = subprocess.run(["uvlm", "report", "smoke-report", "--tracking-uri", uri, "--out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    findings = json.loads((out / "findings.json").read_text())
    assert findings["runs"]["total"] >= 10 and findings["findings"]["1"]["addressed"]
    headline = [r for r in findings["findings"]["1"]["results"] if r["headline"]]
    assert headline and all(r["verdict"] in ("supported", "contradicted", "inconclusive") for r in headline)
    html = (out / "report.html").read_text()
    assert html.count("<img ") >= 3
    if CHROMIUM:
        shot = tmp_path / "report.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
                        (out / "report.html").as_uri()], capture_output=True, timeout=120)
        assert shot.stat().st_size > 50_000
