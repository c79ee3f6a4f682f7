"""Do two checkouts of bottlenecks give the same numbers? (a refactoring check)

    python benchmarks/compare_checkouts.py /path/to/old/checkout /path/to/new/checkout

Runs, in a fresh process per checkout, short deterministic trainings — the digits and
diabetes configs through the CLI, and the concept layers (CBM joint / sequential with a
residual / independent, CEM, ECBM) from Python on synthetic concept data — and prints,
per setup, whether every test metric is identical. Each checkout runs its own
``configs/`` (so renamed options are compared in each version's own words).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import warnings

CLI_RUNS = [("vq_digits", 3), ("dkvb_digits", 3), ("vq_codebook_features_digits", 3), ("vq_residual_digits", 3),
            ("vq_fsq_digits", 3), ("ib_vib_diabetes", 20), ("ib_csib_diabetes", 10), ("ib_mse_diabetes", 20)]


def _run_in(code: str, out: str) -> None:
    """Child process: import bottlenecks from ``code``, run every setup, write test metrics."""
    sys.path.insert(0, os.path.join(code, "src"))
    os.chdir(code)
    warnings.simplefilter("ignore")
    import lightning as L
    import torch

    import bottlenecks
    from bottlenecks.cli import main
    from bottlenecks.data.datamodule import ArrayDataModule
    from bottlenecks.layers.cem import ConceptEmbeddingBottleneck
    from bottlenecks.layers.concept import ConceptBottleneck
    from bottlenecks.layers.ecbm import EnergyConceptBottleneck
    from bottlenecks.models.module import BottleneckModel
    from bottlenecks.models.stages import CBMTrainingMode

    assert bottlenecks.__file__.startswith(code), f"imported {bottlenecks.__file__}, not {code}"
    torch.set_num_threads(1)
    res: dict = {}
    root = tempfile.mkdtemp()
    for cfg, epochs in CLI_RUNS:
        d = os.path.join(root, cfg)
        main(["fit", "--config", f"configs/{cfg}.yaml", "--trainer.max_epochs", str(epochs),
              "--trainer.logger.init_args.save_dir", d, "--trainer.default_root_dir", d,
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
        rows = list(csv.DictReader(open(glob.glob(os.path.join(d, "*", "version_0", "metrics.csv"))[0])))
        res[cfg] = {k: float(v) for r in rows for k, v in r.items() if k.startswith("test/") and v}
    g = torch.Generator().manual_seed(0)
    c = (torch.rand(2000, 5, generator=g) > 0.5).float()
    x = c @ torch.randn(5, 20, generator=g) + 0.3 * torch.randn(2000, 20, generator=g)
    y = (c[:, 0] * 2 + c[:, 1]).long()
    # old option names on purpose: every version accepts them
    setups = [
        ("cbm_joint", lambda: ConceptBottleneck(20, n_concepts=5), None),
        ("cbm_sequential_residual", lambda: ConceptBottleneck(20, n_concepts=5, n_residual=3),
         lambda: CBMTrainingMode("sequential", concept_epochs=4)),
        ("cbm_independent", lambda: ConceptBottleneck(20, n_concepts=5), lambda: CBMTrainingMode("independent", concept_epochs=4)),
        ("cem", lambda: ConceptEmbeddingBottleneck(20, n_concepts=5, embedding_dim=4), None),
        ("ecbm", lambda: EnergyConceptBottleneck(20, num_classes=4, n_concepts=5, hidden=16, embedding_dim=4), None),
    ]
    for name, make, stage in setups:
        L.seed_everything(0, verbose=False)
        dm = ArrayDataModule.from_arrays(x_train=x[:1500], y_train=y[:1500], concepts_train=c[:1500],
                                         x_test=x[1500:], y_test=y[1500:], concepts_test=c[1500:], batch_size=128)
        model = BottleneckModel(make(), num_classes=4, lr=5e-2)
        trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, deterministic=True, callbacks=[stage()] if stage else [])
        trainer.fit(model, dm)
        res[name] = {k: float(v) for k, v in trainer.test(model, dm, verbose=False)[0].items()}
    with open(out, "w") as f:
        json.dump(res, f)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _run_in(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results = []
    for code in sys.argv[1:]:
        out = tempfile.mktemp(suffix=".json")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        subprocess.run([sys.executable, __file__, "--child", os.path.abspath(code), out], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        results.append(json.load(open(out)))
    old, new = results
    print(f"| setup | identical | task metric ({sys.argv[1]} / {sys.argv[2]}) |\n|---|---|---|")
    for name in old:
        same = old[name] == new.get(name)
        key = "test/task_acc" if "test/task_acc" in old[name] else "test/mse"
        print(f"| {name} | {'yes' if same else 'NO'} | {old[name].get(key, float('nan')):.4f} / "
              f"{new.get(name, {}).get(key, float('nan')):.4f} |")


if __name__ == "__main__":
    main()
