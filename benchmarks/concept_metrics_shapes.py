"""Concept-quality metrics of a joint CBM on Shapes, next to the ground-truth oracle and random
concepts — the numbers of docs/analysis.md.

    python benchmarks/concept_metrics_shapes.py          # ~5 min on 2 busy CPU cores

A joint CBM (lite0 features → 10 concepts → linear head) is trained on ``--n-train`` Shapes
images and scored on ``--n-test`` test images with every metric of
:mod:`bottlenecks.analysis.concept_metrics`. OIS and NIS train one small MLP per pair of
concepts, so they use ``--purity-concepts`` (default four) to stay quick.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from semantic_features import load, train_cbm  # noqa: E402

from bottlenecks.analysis import (  # noqa: E402
    causal_concept_effect,
    completeness_score,
    concept_alignment_score,
    cooccurrence_matrix,
    existence_score,
    global_importance,
    niche_impurity_score,
    oracle_impurity_score,
    unit_contributions,
)
from bottlenecks.data.shapes import CLASS_NAMES, SHAPES_CONCEPTS, ShapesDataset  # noqa: E402
from bottlenecks.encoders import shared_encoder  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=1500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--purity-concepts", nargs="+", default=["red", "circle", "large", "striped_background"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    encoder = {"name": "lite0", "image_size": args.image_size}
    enc = shared_encoder(encoder)
    train = ShapesDataset(split="train", n=args.n_train)
    test = ShapesDataset(split="test", n=args.n_test)
    _, c_tr, y_tr, _ = load(train)
    h_tr = enc.encode_dataset(train, progress=False)
    h_te = enc.encode_dataset(test, progress=False)
    c_te, y_te = test.concept_table(), test.targets()
    model = train_cbm(h_tr, c_tr, y_tr, encoder, 300, 0)
    with torch.no_grad():
        logits, out = model(h_te)
        probs_tr = model(h_tr)[1].probs
    acc = float((logits.argmax(1) == y_te).float().mean())
    probs = out.probs
    print(f"[{time.time() - t0:.0f}s] CBM task accuracy {acc:.3f}, concept accuracy "
          f"{float(((probs > 0.5).float() == c_te).float().mean()):.3f}", flush=True)

    rng = np.random.default_rng(0)
    sel = [SHAPES_CONCEPTS.index(c) for c in args.purity_concepts]
    reps = {
        "CBM concept probabilities": (probs_tr.numpy(), probs.numpy()),
        "oracle (true concepts)": (c_tr.numpy(), c_te.numpy()),
        "random": (rng.random(c_tr.shape), rng.random(c_te.shape)),
    }
    print("\n| representation | CAS | OIS | NIS | completeness |")
    print("|---|---|---|---|---|")
    for name, (r_tr, r_te) in reps.items():
        cas = concept_alignment_score(r_te, c_te)
        ois = oracle_impurity_score(r_te[:, sel], c_te[:, sel].numpy())
        nis = niche_impurity_score(r_te[:, sel], c_te[:, sel].numpy(), delta_beta=0.1)
        comp = completeness_score(r_tr, y_tr, r_te, y_te, model_accuracy=acc)
        print(f"| {name} | {cas:.3f} | {ois:.3f} | {nis:.3f} | {comp:.3f} |", flush=True)

    contrib = unit_contributions(model, h_te)
    decision = contrib.for_class()
    imp = global_importance(decision)
    top = imp.argsort(descending=True)[:4]
    print(f"\nexistence (top-2 units of the predicted class present): {existence_score(decision, c_te, k=2):.3f}; "
          f"random ranking: {existence_score(torch.randn_like(decision), c_te, k=2):.3f} "
          f"(base rate {float(c_te.mean()):.3f})")
    print("global importance, top units: " + ", ".join(f"{contrib.names[i]} {float(imp[i]):.3f}" for i in top))
    cace, names = causal_concept_effect(model, h_te, concepts=["red", "circle", "large", "striped_background"])
    rc = CLASS_NAMES.index("red circle")
    print("CaCE on p('red circle'): " + ", ".join(f"{n} {float(cace[i, rc]):+.3f}" for i, n in enumerate(names)))
    co = cooccurrence_matrix(ShapesDataset(split="train", n=args.n_train, cooccurrence=1.0).concept_table())
    free = cooccurrence_matrix(c_tr)
    r, ci = SHAPES_CONCEPTS.index("red"), SHAPES_CONCEPTS.index("circle")
    print(f"co-occurrence P(circle | red): {float(free[r, ci]):.3f} (standard Shapes), "
          f"{float(co[r, ci]):.3f} (cooccurrence=1.0)")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
