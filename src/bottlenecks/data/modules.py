"""Datamodules for the datasets that ship with (or are read by) bottlenecks.

Each is a thin :class:`~bottlenecks.data.datamodule.BottleneckDataModule`: it
says how to build a split's raw dataset; encoding, caching and batching are
shared.
"""

from __future__ import annotations

from typing import Any, Literal

from bottlenecks.data.base import ConceptDataset
from bottlenecks.data.datamodule import BottleneckDataModule


class ShapesDataModule(BottleneckDataModule):
    """Procedural Shapes (:class:`~bottlenecks.data.shapes.ShapesDataset`) through a frozen encoder.

    Args:
        n_train / n_val / n_test: split sizes.
        data_seed: seed of the generated images (the shuffling seed is ``seed``).
        image_size: rendered image size in pixels (the encoder resizes as it needs).
        cooccurrence, label_noise, confounded, spurious_strength: dataset knobs,
            see :class:`~bottlenecks.data.shapes.ShapesDataset`.
        **kwargs: ``encoder``, ``cache_dir``, ``batch_size``, ...: see :class:`BottleneckDataModule`.
    """

    def __init__(
        self,
        n_train: int = 10000,
        n_val: int = 2000,
        n_test: int = 2000,
        data_seed: int = 0,
        image_size: int = 64,
        cooccurrence: float = 0.0,
        label_noise: float = 0.0,
        confounded: bool = False,
        spurious_strength: float = 0.9,
        **kwargs: Any,
    ) -> None:
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.dataset_args = dict(
            seed=data_seed,
            image_size=image_size,
            cooccurrence=cooccurrence,
            label_noise=label_noise,
            confounded=confounded,
            spurious_strength=spurious_strength,
        )
        super().__init__(**kwargs)

    def make_dataset(self, split: str) -> ConceptDataset:
        from bottlenecks.data.shapes import ShapesDataset

        return ShapesDataset(split=split, n=self.sizes[split], return_masks=False, **self.dataset_args)  # type: ignore[arg-type]


class _TableDataModule(BottleneckDataModule):
    """One of sklearn's bundled tables (features already, no encoder), split by ``data_seed``."""

    dataset_class: str  # name in bottlenecks.data.tables

    def __init__(
        self,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        data_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        seed: int = 0,
        steps_per_batch: int | Literal["auto"] = "auto",
    ) -> None:
        self.split_args = dict(val_fraction=val_fraction, test_fraction=test_fraction, seed=data_seed)
        super().__init__(encoder="identity", batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                         steps_per_batch=steps_per_batch)

    def make_dataset(self, split: str) -> ConceptDataset:
        from bottlenecks.data import tables

        return getattr(tables, self.dataset_class)(split=split, **self.split_args)


class DigitsDataModule(_TableDataModule):
    """sklearn's bundled 8×8 digits (64 pixel features in [0, 1], 10 classes, no concepts)."""

    dataset_class = "DigitsDataset"


class DiabetesDataModule(_TableDataModule):
    """sklearn's bundled diabetes regression table (10 standardised features)."""

    dataset_class = "DiabetesDataset"


class ImageFolderDataModule(BottleneckDataModule):
    """Images + a CSV of concept columns and a label column
    (:class:`~bottlenecks.data.folder.ConceptImageFolder`) through a frozen encoder.

    The CSV's ``split_column`` assigns rows to ``train`` / ``val`` / ``test``; when no
    row is marked ``val``, ``val_fraction`` of the train rows is held out (by ``data_seed``)
    for Lightning's validation loop. They are not lost to the model: the exact fits of
    independent/sequential CBMs (:class:`~bottlenecks.models.stages.CBMTrainingMode`) and the
    run report's probe choose their regularisation by k-fold cross-validation over train +
    validation rows while there are at most
    :data:`~bottlenecks.analysis.probes.CV_MAX_ROWS` (20000) of them (above, on the
    validation rows) and refit on train + validation.

    Args:
        root: folder holding the CSV and the images.
        csv, image_column, label_column, concept_columns, split_column, class_names:
            see :class:`~bottlenecks.data.folder.ConceptImageFolder`.
        image_size: size images are resized to when loaded (the encoder resizes again
            to its own resolution).
        **kwargs: ``encoder``, ``cache_dir``, ``batch_size``, ...: see :class:`BottleneckDataModule`.
    """

    def __init__(
        self,
        root: str,
        csv: str = "concepts.csv",
        image_column: str = "image",
        label_column: str = "label",
        concept_columns: list[str] | None = None,
        split_column: str = "split",
        class_names: list[str] | None = None,
        image_size: int = 224,
        val_fraction: float = 0.1,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.folder_args = dict(
            root=root, csv=csv, image_column=image_column, label_column=label_column,
            concept_columns=concept_columns, split_column=split_column, class_names=class_names,
            image_size=image_size,
        )
        self.val_fraction = val_fraction
        self.data_seed = data_seed
        super().__init__(**kwargs)

    def make_dataset(self, split: str) -> ConceptDataset:
        from bottlenecks.data.base import ConceptSubset, holdout_split
        from bottlenecks.data.folder import ConceptImageFolder

        if split == "test" or self._has_val_rows():
            return ConceptImageFolder(split=split, **self.folder_args)  # type: ignore[arg-type]
        train = ConceptImageFolder(split="train", **self.folder_args)  # type: ignore[arg-type]
        keep, held = holdout_split(len(train), self.val_fraction, self.data_seed)
        tag = f"holdout{self.val_fraction}-seed{self.data_seed}"
        return ConceptSubset(train, keep if split == "train" else held, tag=f"{split}-{tag}")

    def _has_val_rows(self) -> bool:
        """Whether the CSV marks rows ``val`` (read with the same normalisation as the dataset).

        Rows whose split is none of train/val/test are never used: they are warned about.
        """
        import warnings
        from pathlib import Path

        from bottlenecks.data.validation import SPLITS, DataWarning, read_csv_table

        if hasattr(self, "_val_rows"):
            return self._val_rows
        csv = Path(self.folder_args["csv"])  # type: ignore[arg-type]
        path = csv if csv.is_absolute() else Path(self.folder_args["root"]) / csv  # type: ignore[operator]
        if not path.is_file():
            raise FileNotFoundError(f"ImageFolderDataModule: no CSV at {path}")
        where = f"ImageFolderDataModule({path})"
        header, rows, lines = read_csv_table(path, where)
        col = self.folder_args["split_column"]
        if col not in header:
            from bottlenecks.data.validation import require_column

            require_column(header, col, "split_column", where)  # type: ignore[arg-type]
        j = header.index(col)  # type: ignore[arg-type]
        other = [(line, row[j]) for line, row in zip(lines, rows) if row[j] not in SPLITS]
        if other:
            values = sorted({v for _, v in other})
            warnings.warn(
                f"{where}: {len(other)} rows have a {col} that is none of {list(SPLITS)} "
                f"(values {values[:5]}, first on line {other[0][0]}); they are not used",
                DataWarning,
                stacklevel=2,
            )
        self._val_rows = any(row[j] == "val" for row in rows)
        return self._val_rows


class CUBDataModule(BottleneckDataModule):
    """CUB-200-2011 from a local copy of the official archive
    (:class:`~bottlenecks.data.cub.CUB200`): 312 attributes as concepts, 200 classes.

    Args:
        root: the ``CUB_200_2011`` folder (or its parent).
        image_size: size images are resized to when loaded.
        val_fraction, data_seed: validation rows held out of the official train split.
        certainty_min, concept_filter, min_class_count, instance_labels: see
            :class:`~bottlenecks.data.cub.CUB200`.
        **kwargs: ``encoder``, ``cache_dir``, ``batch_size``, ...: see :class:`BottleneckDataModule`.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        val_fraction: float = 0.1,
        data_seed: int = 0,
        certainty_min: int = 1,
        concept_filter: str = "majority",
        min_class_count: int = 10,
        instance_labels: bool = False,
        **kwargs: Any,
    ) -> None:
        self.cub_args = dict(
            root=root, image_size=image_size, val_fraction=val_fraction, seed=data_seed,
            certainty_min=certainty_min, concept_filter=concept_filter, min_class_count=min_class_count,
            instance_labels=instance_labels,
        )
        super().__init__(**kwargs)

    def make_dataset(self, split: str) -> ConceptDataset:
        from bottlenecks.data.cub import CUB200

        return CUB200(split=split, return_parts=False, return_bbox=False, **self.cub_args)  # type: ignore[arg-type]

    @property
    def concept_groups(self) -> dict[str, list[str]]:
        """CUB's attribute groups ``{group: [concept names]}`` (group-level interventions)."""
        return self.dataset("train").concept_groups  # type: ignore[attr-defined]

    @property
    def concept_costs(self) -> dict[str, float]:
        """Mean annotation seconds per attribute group (intervention costs)."""
        return self.dataset("train").concept_costs  # type: ignore[attr-defined]
