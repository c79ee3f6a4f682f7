"""CS-IB on diabetes against plain MSE for several output kernel widths ``sigma_y``.

    python benchmarks/csib_output_width.py                       # 5 seeds, the table in docs/information.md
    python benchmarks/csib_output_width.py --seeds 2 --widths output silverman

Each run: the architecture and training of ``configs/ib_csib_diabetes.yaml`` /
``configs/ib_mse_diabetes.yaml`` (150 epochs, batch 64, lr 3e-3, beta = 0.01), the checkpoint
with the best ``val/mse``, test RMSE in the target's standardised units; the seed sets the data
split and the initialisation. Prints mean ± sd over seeds per setting and the per-seed values.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(sigma_y, sigma_cond, seed: int, epochs: int, beta: float) -> float:
    from ib_beta_sweep import make_datamodule
    from lightning.pytorch.callbacks import ModelCheckpoint

    from bottlenecks.layers.stochastic import CSIBBottleneck, NoisyBottleneck
    from bottlenecks.models.module import BottleneckModel

    L.seed_everything(seed, workers=True, verbose=False)
    dm = make_datamodule("diabetes", seed)
    dm.setup("fit")
    common = dict(task="regression", lr=3e-3, weight_decay=1e-4)
    if sigma_y is None:
        model = BottleneckModel(NoisyBottleneck(dm.feature_dim, 16, hidden=[64]), head_hidden=[32], **common)
    else:
        layer = CSIBBottleneck(dm.feature_dim, latent_dim=16, hidden=[64], decoder_hidden=[32],
                               sigma_y=sigma_y, sigma_cond=sigma_cond)
        model = BottleneckModel(layer, task_loss_weight=0.0, loss_weights={"cs_qmi": beta, "cs_prediction": 1.0}, **common)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor="val/mse", mode="min")
        trainer = L.Trainer(max_epochs=epochs, logger=False, callbacks=[ckpt], enable_progress_bar=False,
                            enable_model_summary=False, deterministic=True)
        trainer.fit(model, dm)
        res = trainer.test(model, dm, ckpt_path="best", verbose=False, weights_only=True)[0]
    return math.sqrt(res["test/mse"])


def _width(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--widths", nargs="*", default=["silverman", "median", "1.0", "output", "4.0", "8.0"],
                    help="sigma_y values (rule names or floats, in target sd units)")
    ap.add_argument("--cond", default="silverman", help="sigma_cond for every CS-IB run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    settings = [("MSE", None)] + [(f"CS-IB sigma_y={w}", _width(w)) for w in args.widths]
    for label, w in settings:
        vals = [run(w, _width(args.cond), s, args.epochs, args.beta) for s in seeds]
        print(f"{label:<28} test RMSE {np.mean(vals):.3f} ± {np.std(vals):.3f}   per seed {np.round(vals, 3).tolist()}",
              flush=True)


if __name__ == "__main__":
    main()
