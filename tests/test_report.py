"""Loading runs from a real MLflow store, `uvlm report` end to end, and the HTML rendered in headless Chromium.

The store is a sqlite MLflow store in tmp_path with synthetic sweeps written in the layout of
docs/ARCHITECTURE.md by analysis.synthetic.write_sweep (the real sweep's runs: tests/test_report_smoke.py).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from analysis import frames
from analysis.frames import list_sweeps, load_history, load_runs
from analysis.synthetic import Effects, SyntheticSweep, write_sweep
from search.cli import main
from trainables.config import BudgetConfig
from trainables.errors import UserError

MIXING = SyntheticSweep(name="mixing", train_images=(250, 1000), seeds=(0, 1, 2, 3), fail_fraction=0.1, images=True,
                        eval_steps=(250, 500), searched={"optim.lr": (1e-4, 1e-2, True)},
                        effects=Effects(understanding_benefit=0.05, generation_benefit=0.03))
TRANSFER_HEADLINES = {
    "transfer in the LM": {"finding": 3, "metric": "test/vqa_hidden/overall", "statistic": "did",
                           "treatment": {"data.arm": "mixed", "data.hide_control": False},
                           "control": {"data.arm": "mixed", "data.hide_control": True},
                           "across": {"lm.trainability": ["full", "frozen"]}},
    "understanding benefit": {"finding": 1, "metric": "test/vqa/overall", "statistic": "auc", "smallest_effect": 0.05,
                              "treatment": {"data.arm": "mixed"}, "control": {"data.arm": "understanding"}},
}
TRANSFER = SyntheticSweep(name="transfer", study="transfer", arms=("understanding", "mixed"), train_images=(500,),
                          seeds=(0, 1, 2), hide=True, freezing=("none", "lm_frozen"), eval_steps=(100, 200, 300, 400, 500),
                          headlines=TRANSFER_HEADLINES)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    write_sweep(uri, MIXING)
    write_sweep(uri, TRANSFER)
    return uri


@pytest.fixture(scope="module")
def mixing_report(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "mixing"
    assert main(["report", "mixing", "--tracking-uri", store, "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------- frames

@pytest.mark.parametrize("sweep", ["mixing", "transfer"])
def test_sql_and_client_readers_give_the_same_frames(store, sweep):
    sql = load_runs(sweep, store, method="sql")
    assert_frame_equal(sql, load_runs(sweep, store, method="client"))
    assert_frame_equal(load_history(sweep, store, method="sql"), load_history(sweep, store, method="client"))


def test_runs_frame_layout(store):
    runs = load_runs("mixing", store)
    assert runs.height == 3 * 2 * 4
    assert runs.columns[:len(frames.FIXED_COLUMNS)] == list(frames.FIXED_COLUMNS)
    for column in frames.FIXED_COLUMNS:
        assert f"    {column} " in frames.__doc__, f"column {column} is not documented"
    assert runs.schema["seed"] == pl.Int64 and runs.schema["params.data.train_images"] == pl.Int64
    assert runs.schema["params.optim.lr"] == pl.Float64 and runs.schema["params.data.hide_control"] == pl.Boolean
    assert runs.schema["metrics.test/vqa/overall"] == pl.Float64
    assert set(runs["status"].unique()) <= {"FINISHED", "FAILED"}
    assert runs.filter(pl.col("status") == "FAILED")["error"].str.contains("NaN").all()
    assert set(runs["tags.uvlm.role"].unique()) == {"trial"}  # the parent run is not a row
    history = load_history("mixing", store, metrics=["test/vqa/overall"])
    assert history.columns == ["run_id", "metric", "step", "timestamp", "value"]
    finished = runs.filter(pl.col("status") == "FINISHED")
    last = history.filter(pl.col("step") == 500).join(finished.select("run_id", "metrics.test/vqa/overall"), on="run_id")
    assert last.height == finished.height
    np.testing.assert_allclose(last["value"], last["metrics.test/vqa/overall"])


@pytest.mark.parametrize("values, dtype, parsed", [
    (["1", "None", "3"], pl.Int64, [1, None, 3]), (["True", "false", ""], pl.Boolean, [True, False, None]),
    (["0.5", "1"], pl.Float64, [0.5, 1.0]), (["['weather=raining']", "[]"], pl.String, ["['weather=raining']", "[]"]),
    (["None", "null"], pl.String, [None, None])])
def test_parameters_are_parsed_once(values, dtype, parsed):
    column = frames.typed(pl.Series("params.x", values, pl.String))
    assert column.dtype == dtype and column.to_list() == parsed


def test_unknown_sweep_lists_the_sweeps(store, capsys):
    assert list_sweeps(store) == ["mixing", "transfer"]
    with pytest.raises(UserError, match=r"no sweep named 'mixng'.*did you mean 'mixing'.*sweeps there: mixing, transfer"):
        load_runs("mixng", store)
    assert main(["report", "mixng", "--tracking-uri", store]) == 2
    error = capsys.readouterr().err
    assert error.startswith("uvlm: error: no sweep named 'mixng'") and "Traceback" not in error


def test_missing_store_is_a_user_error(tmp_path):
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    with pytest.raises(UserError, match="no MLflow store"):
        load_runs("mixing", missing)
    assert not (tmp_path / "nothing.db").exists()


# ----------------------------------------------------------------------------- the report

def test_report_files_and_artifacts(store, mixing_report):
    out = mixing_report
    for name in ("report.md", "report.html", "findings.json", "results.csv", "results.parquet", "runs.parquet",
                 "importance.csv", "best_configs.csv", "pairs_finding1_understanding_pairs.csv",
                 "figures/benefit_vs_size.png", "figures/attribute_bars.png", "figures/learning_curves.png",
                 "figures/parallel_coordinates.png", "figures/generated_images.png"):
        assert (out / name).is_file(), name
    markdown = (out / "report.md").read_text()
    assert "Finding 2 is not addressed by this sweep" in markdown and "alignment factor" in markdown
    assert "The alignment curve is not drawn" in markdown and "Transfer bars are not drawn" in markdown
    assert "Icon placement is not drawn: no run scored test/gen/icon" in markdown  # a patch space: no codes to read
    assert "Seeds: 4 (0, 1, 2, 3)" in markdown and "Data sizes (training images): 250, 1000." in markdown
    assert f"Budget rule: steps = {BudgetConfig().value:g}" in markdown and "failed" in markdown  # the default budget
    findings = json.loads((out / "findings.json").read_text())
    assert findings["runs"]["total"] == 24 and findings["findings"]["2"]["addressed"] is False
    from mlflow import MlflowClient

    client = MlflowClient(store)
    parent = client.search_runs([client.get_experiment_by_name("mixing").experiment_id], "tags.`uvlm.role` = 'sweep'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/findings.json", "report/report.md", "report/figures"} <= logged


def test_report_numbers_match_an_independent_recomputation(store, mixing_report):
    """The headline understanding benefit, recomputed with plain numpy from MlflowClient data."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("mixing").experiment_id
    values: dict[tuple[str, int, str], float] = {}
    for run in client.search_runs([experiment], "tags.`uvlm.role` = 'trial' and attributes.status = 'FINISHED'"):
        key = (run.data.params["data.arm"], int(run.data.params["seed"]), run.data.params["data.train_images"])
        values[key] = client.get_metric_history(run.info.run_id, "test/vqa/overall")[-1].value
    differences = [values[("mixed", seed, size)] - values[("understanding", seed, size)]
                   for (arm, seed, size) in values if arm == "mixed" and ("understanding", seed, size) in values]
    findings = json.loads((mixing_report / "findings.json").read_text())
    headline = next(r for r in findings["findings"]["1"]["results"]
                    if r["headline"] and r["metric"] == "test/vqa/overall" and "trend" not in r["name"])
    assert headline["n"] == len(differences)
    assert headline["estimate"] == pytest.approx(float(np.mean(differences)), abs=1e-12)
    assert headline["ci_low"] <= 0.05 <= headline["ci_high"] and headline["verdict"] == "supported"
    pairs = pl.read_csv(mixing_report / "pairs_finding1_understanding_pairs.csv").filter(
        (pl.col("metric") == "test/vqa/overall") & (pl.col("seed") == 0) & (pl.col("size") == 1000))
    if ("mixed", 0, "1000") in values and ("understanding", 0, "1000") in values:  # one paired difference, by hand
        assert pairs["difference"].item() == pytest.approx(values[("mixed", 0, "1000")] - values[("understanding", 0, "1000")])
    results = pl.read_csv(mixing_report / "results.csv")
    assert results.filter(pl.col("headline") & (pl.col("metric") == "test/vqa/overall")).height == 2  # benefit, trend


def test_sweep_without_trials_is_a_user_error(tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("empty", artifact_location=(tmp_path / "artifacts").as_uri())
    client.set_terminated(client.create_run(experiment, tags={"uvlm.role": "sweep"}).info.run_id)
    assert main(["report", "empty", "--tracking-uri", uri]) == 2
    assert "has no trial runs yet" in capsys.readouterr().err


def test_transfer_report(store, tmp_path):
    assert main(["report", "transfer", "--tracking-uri", store, "--out", str(tmp_path), "--no-log"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "(figures/transfer.png)" in markdown and "transfer lives in the LM" in markdown
    assert "The trend of the understanding benefit with data size is not computed" in markdown
    assert "No hyperparameter was searched" in markdown


def test_declared_headlines_alone_get_verdicts_with_their_power(store, tmp_path):
    """The transfer sweep declares two headlines (trial_table.json on its parent run); the mixing sweep none."""
    assert main(["report", "transfer", "--tracking-uri", store, "--out", str(tmp_path), "--no-log"]) == 0
    findings = json.loads((tmp_path / "findings.json").read_text())
    assert findings["headlines"]["source"] == "declared" and set(findings["headlines"]["declared"]) == set(TRANSFER_HEADLINES)
    results = [r for f in findings["findings"].values() if f["addressed"] for r in f["results"]]
    headlines = [r for r in results if r["headline"]]
    assert sorted(r["name"] for r in headlines) == sorted(TRANSFER_HEADLINES)
    for r in headlines:
        assert r["role"] == "headline" and r["verdict"] in ("supported", "inconclusive", "contradicted", "equivalent")
        assert r["sd_paired"] > 0 and r["mde_80"] > 0 and r["seeds_for_target"] >= 2 and r["half_width"] > 0
    others = [r for r in results if not r["headline"]]
    assert others and all(r["role"] == "exploratory" and r["verdict"] == "exploratory" for r in others)
    assert any(r["name"] == "transfer lives in the LM" for r in others), "the default headline is demoted"
    csv = pl.read_csv(tmp_path / "results.csv")
    assert {"role", "p_adjusted", "sd_paired", "mde_80", "seeds_for_target", "half_width"} <= set(csv.columns)
    assert csv.filter(pl.col("headline")).height == 2
    markdown = (tmp_path / "report.md").read_text()
    assert "declared in the space file" in markdown and "detectable at 80% power" in markdown
    assert "End point or area under the learning curve" in markdown and "Holm" in markdown
    assert "Hidden value's own accuracy (test/vqa_hidden/weather, LM and adapters train)" in markdown
    assert "answers name the hidden value more often" in markdown  # 0.5 against 0.3 in the synthetic sweep
    did = next(r for r in headlines if r["name"] == "transfer in the LM")
    assert did["ci_low"] <= 0.2 <= did["ci_high"]  # transfer 0.2 with the LM trained, 0 with it frozen


def test_headline_verdicts_carry_their_smallest_effect_and_family_adjusted_p(store, tmp_path):
    """Each headline's δ (declared or the default) and its p value Holm-adjusted over the sweep's headlines."""
    from analysis import stats

    assert main(["report", "transfer", "--tracking-uri", store, "--out", str(tmp_path), "--no-log"]) == 0
    findings = json.loads((tmp_path / "findings.json").read_text())
    headlines = {r["name"]: r for f in findings["findings"].values() if f["addressed"] for r in f["results"]
                 if r["headline"]}
    assert {name: r["smallest_effect"] for name, r in headlines.items()} == {"understanding benefit": 0.05,
                                                                            "transfer in the LM": 0.02}
    names = sorted(headlines)
    adjusted = stats.holm([headlines[name]["p_value"] for name in names])
    assert [headlines[name]["p_adjusted"] for name in names] == pytest.approx(adjusted.tolist())
    assert any(headlines[name]["p_adjusted"] > headlines[name]["p_value"] for name in names)
    correction = "Verdicts corrected as one family: Holm over 2 headlines (family-wise error 5%)."
    assert findings["headlines"]["correction"] == correction
    markdown = (tmp_path / "report.md").read_text()
    assert correction in markdown and "equivalent (|effect| < δ): the whole interval lies inside ±δ" in markdown
    assert "| δ |" in markdown and "| 0.05 |" in markdown


def test_without_declarations_the_default_headlines_are_used(mixing_report):
    findings = json.loads((mixing_report / "findings.json").read_text())
    assert findings["headlines"]["source"] == "default"
    markdown = (mixing_report / "report.md").read_text()
    assert "the default set (the space file declares none)" in markdown
    assert "The benefit against records seen is not drawn" in markdown


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make install-test installs it)")
def test_html_renders_with_every_figure_in_headless_chromium(mixing_report, tmp_path):
    html = (mixing_report / "report.html").read_text()
    assert "src='data:image/png;base64," in html
    assert not re.search(r"(src|href)=['\"](?!data:)", html) and "<link" not in html  # self-contained
    check = tmp_path / "check.html"
    script = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
              "const ok=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
              "document.title='figures-loaded '+ok+'/'+i.length;});</script>")
    check.write_text(html.replace("</body>", script + "</body>"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    images = html.count("<img ")
    assert images == 5
    assert f"<title>figures-loaded {images}/{images}</title>" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,3000", (mixing_report / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000
    shutil.copy(shot, mixing_report / "screenshot.png")


# ----------------------------------------------------------------------------- a tracking server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_uri_reads_the_same_frame(store, tmp_path):
    """Through `mlflow server` (HTTP, the MlflowClient reader) the frame equals the direct SQL read."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        uri = f"http://127.0.0.1:{port}"
        expected = load_runs("mixing", store)
        served = load_runs("mixing", uri)
        assert_frame_equal(expected.drop("experiment_id"), served.drop("experiment_id"))
        assert_frame_equal(load_history("transfer", store), load_history("transfer", uri))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_power_command_prints_each_headline(store, capsys):
    assert main(["power", "transfer", "--tracking-uri", store, "--half-width", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "declared in the space file" in out and "seeds for ±0.05" in out and "detectable at 80% power" in out
    assert "transfer in the LM" in out and "understanding benefit" in out
    assert main(["power", "transfer", "--tracking-uri", store, "--half-width", "0"]) == 2


def test_declarations_are_read_from_the_logged_space_file_when_the_trial_table_lacks_them(tmp_path):
    """Sweeps logged before trial_table.json had a `headlines` key: the space file logged beside it is read."""
    from mlflow import MlflowClient

    from analysis.sweep import from_parent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("old", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, tags={"uvlm.role": "sweep"}).info.run_id
    client.log_text(parent, yaml.safe_dump({"study": "old", "headlines": TRANSFER_HEADLINES}), "old.yaml")
    client.log_dict(parent, {"space_file": "old.yaml", "trials": []}, "trial_table.json")
    declared = from_parent("old", uri)
    assert set(declared) == set(TRANSFER_HEADLINES) and declared["transfer in the LM"].statistic.value == "did"
    client.log_dict(parent, {"space_file": "old.yaml", "headlines": {}}, "trial_table.json")
    assert from_parent("old", uri) is None  # the trial table's own (empty) record wins


def test_limits_name_runs_that_never_read_the_images_and_frozen_random_lms():
    import polars as pl

    from analysis.sections import untrained_runs

    runs = pl.DataFrame({"metrics.test/vqa/overall": [0.38, 0.80, 0.0, 0.02],
                         "metrics.baseline/vqa/overall": [0.36] * 4,
                         "params.data.arm": ["mixed", "mixed", "generation", "mixed"],
                         "params.lm.trainability": ["full", "full", "full", "frozen"],
                         "params.lm.pretrained_path": [None, None, None, None]})
    first, second = untrained_runs(runs)
    assert first.startswith("1 of 2 runs that train on understanding records ended within 0.05")  # not generation-only
    assert second.startswith("1 runs froze a randomly initialised LM")
    pretrained = runs.with_columns(pl.lit("/models/lm").alias("params.lm.pretrained_path"))
    assert len(untrained_runs(pretrained)) == 1 and not untrained_runs(runs.filter(pl.col("metrics.test/vqa/overall") > 0.5))


def test_icon_figure_draws_each_cell_per_corner_beside_the_constant_generation():
    from analysis import figures
    from trainables.data.records import CORNERS

    rows = []
    for arm, level in (("generation", 0.4), ("mixed", 0.6)):
        for seed in range(3):
            row = {"run_id": f"{arm}{seed}", "status": "FINISHED", "seed": seed, "tags.uvlm.factor.arm": arm}
            for key in (*CORNERS, "overall"):
                row[f"metrics.test/gen/icon/{key}"] = level + 0.01 * seed
                row[f"metrics.baseline/gen/icon/{key}"] = 0.0
            rows.append(row)
    figure = figures.icon_corners(pl.DataFrame(rows))
    axis = figure.axes[0]
    assert len(axis.patches) == 2 * 5  # a bar per cell and corner (and overall)
    assert sorted(text.get_text() for text in axis.get_legend().get_texts())[:2] == ["arm=generation", "arm=mixed"]
    assert max(p.get_height() for p in axis.patches) == pytest.approx(0.61)
    with pytest.raises(figures.Skip, match="Icon placement is not drawn"):
        figures.icon_corners(pl.DataFrame([{"run_id": "a", "status": "FINISHED", "seed": 0}]))


def test_an_equivalent_verdict_names_its_smallest_effect_and_is_coloured_by_its_kind():
    from analysis.document import Document, render_html, render_markdown

    document = Document()
    document.table(pl.DataFrame({"verdict": ["equivalent (|effect| < 0.02)", "supported"]}))
    page = render_html(document, "t")
    assert "<td class='equivalent'>equivalent (|effect| &lt; 0.02)</td>" in page and "<td class='supported'>" in page
    assert "equivalent (\\|effect\\| < 0.02)" in render_markdown(document)


def test_findings_json_and_the_report_carry_each_headlines_arms_and_floor(tmp_path):
    """A did whose control cells answer 0.13 above the constant answers, with learned_margin 0.15: no verdict, left
    out of the family; findings.json and the report show each cell's mean beside the floor."""
    from analysis import stats

    headlines = {"transfer in the LM": {**TRANSFER_HEADLINES["transfer in the LM"], "learned_margin": 0.15},
                 "understanding benefit": {**TRANSFER_HEADLINES["understanding benefit"], "ceiling": 0.95}}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_sweep(uri, SyntheticSweep(**{**TRANSFER.__dict__, "name": "gated", "headlines": headlines}))
    assert main(["report", "gated", "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--no-log"]) == 0
    findings = json.loads((tmp_path / "out" / "findings.json").read_text())
    results = {r["name"]: r for f in findings["findings"].values() if f["addressed"] for r in f["results"] if r["headline"]}
    did, benefit = results["transfer in the LM"], results["understanding benefit"]
    assert did["verdict"] == stats.BELOW_BASELINE and did["learned_margin"] == 0.15 and did["p_adjusted"] is None
    assert len(did["arm_means"]) == 4 and did["floor"] == pytest.approx(0.372)
    assert benefit["verdict"] != stats.BELOW_BASELINE and benefit["ceiling"] == 0.95
    assert set(benefit["arm_means"]) == {"arm=mixed", "arm=understanding"}
    assert findings["headlines"]["correction"] == ("Verdicts corrected as one family: Holm over 1 headline (family-wise "
                                                   "error 5%); 1 headline below baseline or at ceiling, without a "
                                                   "verdict, left out.")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| arms vs floor |" in markdown and "| below baseline |" in markdown
    assert "vs floor 0.372 (+0.15)" in markdown and "; ceiling 0.95" in markdown
    assert "below baseline, when a compared arm's mean final score is at or below" in markdown
