"""Issue 13: training features streamed from the on-disk cache in bounded blocks."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from bottlenecks.data.datamodule import StreamedFeatureBatches, streamed_loader
from bottlenecks.data.modules import ImageFolderDataModule
from bottlenecks.layers.concept import ConceptBottleneck
from bottlenecks.models.module import BottleneckModel


def _npy(tmp_path, n=1000, d=6):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    path = tmp_path / "features.npy"
    np.save(path, x)
    return path, x


def _epoch(ds, epoch):
    loader = streamed_loader(ds)
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_an_epoch_visits_every_row_once_with_its_own_features_and_labels(tmp_path):
    path, x = _npy(tmp_path)
    y = torch.arange(len(x)) % 7
    c = torch.from_numpy(x[:, :2] % 2)
    ds = StreamedFeatureBatches(path, y, c, batch_size=64, block_rows=50, buffer_blocks=3, seed=1)
    batches = _epoch(ds, 0)
    assert [len(b["x"]) for b in batches] == [64] * 15 + [40]
    index = torch.cat([b["index"] for b in batches])
    assert sorted(index.tolist()) == list(range(len(x)))  # each row once
    for b in batches:  # the rows belong to their indices (batches straddle buffer loads)
        assert torch.equal(b["x"], torch.from_numpy(x[b["index"].numpy()]))
        assert torch.equal(b["y"], y[b["index"]]) and torch.equal(b["concepts"], c[b["index"]])
    # shuffled: not the file's order; another epoch another order; the same epoch the same order
    assert not torch.equal(index, torch.arange(len(x)))
    again = torch.cat([b["index"] for b in _epoch(ds, 0)])
    other = torch.cat([b["index"] for b in _epoch(ds, 1)])
    assert torch.equal(index, again) and not torch.equal(index, other)
    # memory: one buffer of block_rows * buffer_blocks rows, far below the file
    assert ds.buffer_bytes == 150 * 6 * 4 < path.stat().st_size / 5
    # a sample for FeatureNorm / data initialisation: read by row, not through the mapping
    rows = torch.tensor([999, 3, 500, 3])
    assert torch.equal(ds.take(rows), torch.from_numpy(x[rows.numpy()]))
    with pytest.raises(IndexError, match="row 1000 is out of range"):
        ds.take(torch.tensor([1000]))
    plain = StreamedFeatureBatches(path, y, batch_size=100, shuffle=False)
    assert torch.equal(torch.cat([b["index"] for b in _epoch(plain, 3)]), torch.arange(len(x)))


def test_bad_streaming_input_is_named(tmp_path):
    path, x = _npy(tmp_path)
    with pytest.raises(ValueError, match="has 1000 rows but labels have 999"):
        StreamedFeatureBatches(path, torch.zeros(999))
    np.save(tmp_path / "ints.npy", np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="2-D C-order float array"):
        StreamedFeatureBatches(tmp_path / "ints.npy", torch.zeros(4))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="is not a .npy file"):
        StreamedFeatureBatches(tmp_path / "junk.npy", torch.zeros(4))
    with pytest.raises(ValueError, match="must be positive"):
        StreamedFeatureBatches(path, torch.zeros(1000), block_rows=0)


def _image_folder(root, n=240):
    (root / "img").mkdir(parents=True)
    g = np.random.default_rng(0)
    lines = ["image,label,red,split"]
    for i in range(n):
        red = i % 2
        pixels = g.integers(0, 90, (4, 4, 3)).astype(np.uint8)
        pixels[..., 0] += np.uint8(150 * red)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{red},{red},{'train' if i < 180 else 'val' if i < 210 else 'test'}")
    (root / "concepts.csv").write_text("\n".join(lines) + "\n")


class _Flatten:
    """A frozen 'encoder' that flattens 4x4 images: cheap, and its outputs go through the cache."""

    feature_dim = 48

    def cache_identity(self):
        return {"encoder": "flatten-4x4"}

    def encode_dataset(self, ds, **kwargs):
        return torch.stack([ds[i]["x"].reshape(-1) for i in range(len(ds))])


class _FlatFolder(ImageFolderDataModule):
    encoder = _Flatten()


@pytest.mark.parametrize("stream", [True, False])
def test_training_streamed_from_the_feature_cache_learns(tmp_path, stream):
    _image_folder(tmp_path)
    dm = _FlatFolder(root=str(tmp_path), image_size=4, cache_dir=str(tmp_path / "c"),
                               batch_size=16, stream=stream, stream_block_rows=20, stream_buffer_blocks=2)
    dm.setup("fit")
    assert isinstance(dm.split("train"), StreamedFeatureBatches) is stream
    L.seed_everything(0)
    model = BottleneckModel(ConceptBottleneck(48, concept_names=dm.concept_names), num_classes=2, lr=0.05)
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, dm)
    assert trainer.global_step == 4 * 12  # 180 rows in batches of 16
    assert trainer.train_dataloader.sampler.epoch == 3  # Lightning reshuffles every epoch
    acc = trainer.test(model, dm, verbose=False)[0]["test/task_acc"]
    assert acc > 0.9


def test_streamed_steps_per_batch_make_the_updates_of_one(tmp_path):
    # several minibatches per Lightning batch cut the same streamed row order into larger pieces
    _image_folder(tmp_path)
    weights = []
    for k in (1, 4):
        dm = _FlatFolder(root=str(tmp_path), image_size=4, cache_dir=str(tmp_path / "c"), batch_size=16,
                         stream=True, stream_block_rows=20, stream_buffer_blocks=2, steps_per_batch=k)
        L.seed_everything(0)
        model = BottleneckModel(ConceptBottleneck(48, concept_names=dm.concept_names), num_classes=2, lr=0.05)
        trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.fit(model, dm)
        assert trainer.global_step == 3 * 12 and trainer.num_training_batches == -(-12 // k)
        weights.append(model.state_dict())
    for name, p in weights[0].items():
        assert torch.equal(p, weights[1][name]), name
