"""`bottlenecks report RUN_DIR`: a self-contained offline HTML page for trained runs (a concept
model on Shapes images, a codebook on digits, a regression VIB), bad run directories named
clearly, and (when Chromium is installed) the page rendered headless to a screenshot."""

import base64
import pickle
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from bottlenecks.analysis.html_report import Section, build_report
from bottlenecks.cli import main


def _fit(tmp_path, name, model, data, epochs, test=True):
    cfg = {
        "seed_everything": 0,
        "test_after_fit": test,
        "trainer": {
            "max_epochs": epochs, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "log_every_n_steps": 1, "default_root_dir": str(tmp_path / "runs"),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "runs"), "name": name}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"monitor": "val/loss", "save_last": True}},
                          {"class_path": "bottlenecks.analysis.report.RunReport",
                           "init_args": {"linear_probe": False}}],
        },
        "model": {"class_path": "bottlenecks.models.module.BottleneckModel", "init_args": model},
        "data": data,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    return tmp_path / "runs" / name / "version_0"


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes_run")
    data = {"class_path": "bottlenecks.data.modules.ShapesDataModule",
            "init_args": {"n_train": 400, "n_val": 100, "n_test": 120, "image_size": 32, "batch_size": 64,
                          "encoder": {"name": "lite0", "image_size": 64}, "cache_dir": str(tmp / "cache")}}
    model = {"lr": 0.01, "bottleneck": {"class_path": "bottlenecks.layers.concept.ConceptBottleneck"}}
    return _fit(tmp, "cbm", model, data, epochs=8)


def _images(page):
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


@pytest.mark.slow
def test_report_of_a_concept_model_on_images(shapes_run, capsys):
    # the run drew its own curves at the end (RunReport), with no extra step
    assert (shapes_run / "curves.png").read_bytes().startswith(b"\x89PNG")
    main(["report", str(shapes_run)])
    assert "report:" in capsys.readouterr().out
    page = (shapes_run / "report.html").read_text()
    for title in ("Run", "Metrics", "Training curves", "Units (concept)", "Top-activating examples",
                  "Unit contributions", "Confusion matrix", "Intervention curves"):
        assert f"<h2>{title}</h2>" in page, title
    assert 'class="error"' not in page
    # self-contained: every picture is embedded, nothing is fetched
    assert not re.search(r"""(src|href|url)\s*[=(]\s*['"]?\s*(https?:|//|file:|ftp:)""", page, re.I)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    images = _images(page)
    assert len(images) >= 8
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    # the unit table names every concept of the data
    from bottlenecks.data.shapes import SHAPES_CONCEPTS

    for concept in SHAPES_CONCEPTS:
        assert f"<td>{concept}</td>" in page


@pytest.mark.slow
def test_report_of_a_codebook_and_of_a_regression_run(tmp_path):
    vq = _fit(tmp_path, "vq", {"lr": 0.01, "standardize_features": False,
                                "bottleneck": {"class_path": "bottlenecks.layers.quantize.VectorQuantizer",
                                               "init_args": {"codebook_size": 16, "heads": 2}}},
              {"class_path": "bottlenecks.data.modules.DigitsDataModule", "init_args": {"batch_size": 64}}, 2)
    out = build_report(vq, tmp_path / "vq.html", top_k=4, n_example_units=2)
    page = out.read_text()
    assert "<h2>Units (code)</h2>" in page and "<td>head1/code15</td>" in page
    assert "Top-activating examples" in page  # digits are 8x8 pictures
    assert "are not the columns the head reads" in page  # contributions: explained, not drawn
    assert "Intervention curves" not in page and 'class="error"' not in page

    vib = _fit(tmp_path, "vib", {"lr": 0.01, "bottleneck": {
        "class_path": "bottlenecks.layers.stochastic.GaussianBottleneck", "init_args": {"out_features": 4}}},
        {"class_path": "bottlenecks.data.modules.DiabetesDataModule"}, 2)
    page = build_report(vib).read_text()
    assert "<h2>Units (latent)</h2>" in page and "MSE" in page
    assert "Confusion matrix" not in page and "Top-activating examples" not in page
    assert 'class="error"' not in page

    # an extra section (e.g. attribution, when it lands) renders in place; a broken one is
    # shown as an error box without losing the page
    def extra(ctx):
        return Section("Extra", f"<p>{len(ctx.units)} units</p>")

    def broken(ctx):
        raise RuntimeError("boom")

    with pytest.warns(UserWarning, match="report section broken failed"):
        page = build_report(vib, tmp_path / "x.html", extra_sections=[extra, broken]).read_text()
    assert "<h2>Extra</h2><p>4 units</p>" in page and "broken failed: RuntimeError: boom" in page

    # a run whose data cannot be rebuilt still gets metrics and curves, and says why
    cfg = yaml.safe_load((vq / "config.yaml").read_text())
    cfg["data"]["class_path"] = "bottlenecks.models.module.BottleneckModel"
    (vq / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.warns(UserWarning, match="no data analysis"):
        page = build_report(vq, tmp_path / "nodata.html").read_text()
    assert "is not a bottlenecks FeatureDataModule" in page and "<h2>Training curves</h2>" in page


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_bad_run_directories_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nowhere")])
    assert e.value.code == 2
    assert f"run directory '{tmp_path / 'nowhere'}' does not exist" in capsys.readouterr().err

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["report", str(run)])
    err = capsys.readouterr().err
    assert "has no checkpoint" in err and "checkpoints/*.ckpt" in err

    # a pickle posing as a checkpoint is refused without running it
    marker = tmp_path / "pwned"
    (run / "checkpoints" / "last.ckpt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(SystemExit):
        main(["report", str(run)])
    err = capsys.readouterr().err
    assert ("refused to load a checkpoint" in err or "corrupt or not a PyTorch checkpoint" in err) and err.count("\n") == 1
    assert not marker.exists()

    with pytest.raises(SystemExit):
        main(["report", str(run), "--checkpoint", str(run / "missing.ckpt")])
    assert "missing.ckpt' does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(shapes_run, tmp_path):
    page = build_report(shapes_run, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,2400", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert img.shape == (2400, 1200, 3)
    # not a blank page: text, tables and plots cover a good part of it
    ink = (img.mean(-1) < 200).mean()
    assert ink > 0.02, f"the rendered page is (almost) blank: {ink:.3%} dark pixels"
    # and the plots are drawn: more than a few distinct colours (the matplotlib colormaps)
    assert len(np.unique(img[:, :, 2].astype(int))) > 50
