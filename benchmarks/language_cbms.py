"""Measured numbers for docs/language_cbms.md, on planted paired image/text embeddings
(tests/_language_data.py: concept directions whose answer is known; a stand-in for CLIP).

Run: ``OMP_NUM_THREADS=1 python benchmarks/language_cbms.py [--seeds 3]``. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _language_data import accuracy, candidates, planted, train  # noqa: E402

from bottlenecks.analysis.concept_selection import (  # noqa: E402
    concept_similarities,
    discriminability,
    redundancy,
    submodular_select,
)
from bottlenecks.analysis.few_shot import few_shot_indices, linear_probe_accuracy  # noqa: E402
from bottlenecks.layers.label_free import LaBoBottleneck, LabelFreeCBM  # noqa: E402
from bottlenecks.layers.sparse_autoencoder import SparseAutoencoder, name_units  # noqa: E402
from bottlenecks.layers.sparse_cbm import (  # noqa: E402
    SparseConceptBottleneck,
    activation_sparsity,
    concept_matrix_search,
)
from bottlenecks.models.module import BottleneckModel  # noqa: E402


def mean_sd(xs: list[float]) -> str:
    t = torch.tensor(xs, dtype=torch.float64)
    return f"{float(t.mean()):.3f} ± {float(t.std()) if len(xs) > 1 else 0.0:.3f}"


def selection(seeds: int) -> None:
    print("\n### Submodular selection vs random subsets (k = 12 of 54 candidates)\n")
    print("| subset | probe accuracy | mean D(c) | redundancy (nearest-member cosine) |")
    print("|---|---|---|---|")
    sel_acc, sel_d, sel_r, rnd_acc, rnd_d, rnd_r = [], [], [], [], [], []
    for seed in range(seeds):
        p = planted(n=1200, seed=seed)
        names, vecs = candidates(p, seed=seed + 1)
        sims = concept_similarities(p.x, vecs)
        tr, te = slice(0, 600), slice(600, None)
        D = discriminability(sims[tr], p.y[tr])
        chosen = submodular_select(vecs, 12, D)

        def probe(idx):
            return linear_probe_accuracy(sims[tr][:, idx], p.y[tr], sims[te][:, idx], p.y[te])

        sel_acc.append(probe(chosen))
        sel_d.append(float(D[chosen].mean()))
        sel_r.append(redundancy(vecs, chosen))
        g = torch.Generator().manual_seed(100 + seed)
        for _ in range(10):
            r = torch.randperm(len(names), generator=g)[:12].tolist()
            rnd_acc.append(probe(r))
            rnd_d.append(float(D[r].mean()))
            rnd_r.append(redundancy(vecs, r))
    print(f"| submodular ({seeds} datasets) | {mean_sd(sel_acc)} | {mean_sd(sel_d)} | {mean_sd(sel_r)} |")
    print(f"| random ({10 * seeds} draws) | {mean_sd(rnd_acc)} | {mean_sd(rnd_d)} | {mean_sd(rnd_r)} |")


def sparse_cbm(seeds: int) -> None:
    print("\n### Sparse-CBM objectives (planted data, 1000 train / 500 test, 20 epochs)\n")
    print("| objective | test accuracy | concept sparsity (share of concepts not needed for 90 % mass) | train s |")
    print("|---|---|---|---|")
    for objective in ("l1", "contrastive", "gumbel"):
        acc, sp, secs = [], [], []
        for seed in range(seeds):
            p = planted(n=1500, seed=seed)
            torch.manual_seed(seed)
            layer = SparseConceptBottleneck(32, p.names, objective=objective, concept_vectors=p.vectors)
            model = BottleneckModel(layer, num_classes=6, standardize_features=False)
            t0 = time.perf_counter()
            train(model, p.x[:1000], p.y[:1000], epochs=20, lr=1e-2, seed=seed)
            secs.append(time.perf_counter() - t0)
            acc.append(accuracy(model, p.x[1000:], p.y[1000:]))
            sp.append(float(activation_sparsity(layer.read_units(p.x[1000:]))))
        print(f"| {objective} | {mean_sd(acc)} | {mean_sd(sp)} | {mean_sd(secs)} |")
    cms, zs = [], []
    for seed in range(seeds):
        p = planted(n=1500, seed=seed)
        cms.append(float((concept_matrix_search(p.x, p.vectors, p.class_vectors).argmax(1) == p.y).float().mean()))
        zs.append(float(((F.normalize(p.x, dim=1) @ p.class_vectors.T).argmax(1) == p.y).float().mean()))
    print(f"\nTraining-free: concept matrix search {mean_sd(cms)}, zero-shot class-name matching {mean_sd(zs)}.")


def label_free(seeds: int) -> None:
    from sklearn.metrics import roc_auc_score

    print("\n### Label-free CBM: concept units vs planted concepts (no concept labels used)\n")
    print("| projection loss weight | mean concept AUROC | min concept AUROC | test accuracy |")
    print("|---|---|---|---|")
    for w in (1.0, 0.0):
        mean_a, min_a, acc = [], [], []
        for seed in range(seeds):
            p = planted(n=1500, seed=seed)
            torch.manual_seed(seed)
            layer = LabelFreeCBM(32, p.names, concept_vectors=p.vectors)
            model = BottleneckModel(layer, num_classes=6, standardize_features=False, loss_weights={"projection": w})
            train(model, p.x[:1000], p.y[:1000], epochs=25, lr=1e-2, seed=seed)
            a = layer.read_units(p.x[1000:])
            au = [roc_auc_score(p.concepts[1000:, j].numpy(), a[:, j].numpy()) for j in range(len(p.names))]
            mean_a.append(sum(au) / len(au))
            min_a.append(min(au))
            acc.append(accuracy(model, p.x[1000:], p.y[1000:]))
        print(f"| {w} | {mean_sd(mean_a)} | {mean_sd(min_a)} | {mean_sd(acc)} |")


def few_shot(seeds: int) -> None:
    print("\n### LaBo vs a linear probe at the same k (planted data, noise 0.5, 600 test images)\n")
    print("| k per class | LaBo | linear probe |")
    print("|---|---|---|")
    p = planted(n=1600, noise=0.5)
    xt, yt = p.x[1000:], p.y[1000:]
    prior = LaBoBottleneck(32, p.names, 6, class_concepts=p.class_concepts, concept_vectors=p.vectors)
    prior.init_from_data(p.x[:1000])
    print(f"| 0 (language prior only) | {accuracy(BottleneckModel(prior, num_classes=6, standardize_features=False), xt, yt):.3f} | – |")
    for k in (1, 2, 4, 8, 16):
        la, lp = [], []
        for seed in range(seeds):
            idx = few_shot_indices(p.y[:1000], k, seed=seed)
            layer = LaBoBottleneck(32, p.names, 6, class_concepts=p.class_concepts, concept_vectors=p.vectors)
            model = BottleneckModel(layer, num_classes=6, standardize_features=False)
            train(model, p.x[idx], p.y[idx], epochs=40, lr=1e-2, seed=seed)
            la.append(accuracy(model, xt, yt))
            lp.append(linear_probe_accuracy(p.x[idx], p.y[idx], xt, yt))
        print(f"| {k} | {mean_sd(la)} | {mean_sd(lp)} |")


def sae(seeds: int) -> None:
    print("\n### SAE on a planted dictionary (24 atoms in 32-d, 3 active per sample, 4000 samples, 48 units)\n")
    print("| sparsity | atoms recovered (cos ≥ 0.9) | mean best cosine | correctly named | L0 | rel. reconstruction error | s |")
    print("|---|---|---|---|---|---|---|")
    for sparsity, coeff in (("topk", 0.0), ("l1", 0.2)):
        rec, mc, named, l0, err, secs = [], [], [], [], [], []
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            atoms = F.normalize(torch.randn(24, 32, generator=g), dim=1)
            codes = torch.zeros(4000, 24)
            for i in range(4000):
                codes[i, torch.randperm(24, generator=g)[:3]] = 0.5 + torch.rand(3, generator=g)
            x = codes @ atoms + 0.02 * torch.randn(4000, 32, generator=g)
            torch.manual_seed(seed)
            model = SparseAutoencoder(32, 48, sparsity=sparsity, top_k=3, l1_coeff=coeff)
            t0 = time.perf_counter()
            hist = model.fit(x, epochs=25, lr=3e-3, resample_every=100, seed=seed)
            secs.append(time.perf_counter() - t0)
            cos, unit = (atoms @ model.directions().T).max(1)
            words = [f"atom{j}" for j in range(24)] + [f"distractor{j}" for j in range(40)]
            vocab = torch.cat([atoms, F.normalize(torch.randn(40, 32, generator=g), dim=1)])
            names, _ = name_units(model.directions(), words, vocab)
            rec.append(float((cos >= 0.9).float().mean()))
            mc.append(float(cos.mean()))
            named.append(sum(names[int(unit[j])] == f"atom{j}" for j in range(24)) / 24)
            l0.append(hist["l0"])
            err.append(hist["reconstruction"])
        print(f"| {sparsity} | {mean_sd(rec)} | {mean_sd(mc)} | {mean_sd(named)} | {mean_sd(l0)} | {mean_sd(err)} | {mean_sd(secs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    selection(args.seeds)
    label_free(args.seeds)
    few_shot(args.seeds)
    sparse_cbm(args.seeds)
    sae(args.seeds)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
