"""Datasets (raw, concept-annotated) and datamodules (features, batches)."""

from bottlenecks.data.base import ConceptDataset, ConceptSubset
from bottlenecks.data.cub import CUB200
from bottlenecks.data.datamodule import ArrayDataModule, BottleneckDataModule, FeatureDataModule
from bottlenecks.data.folder import ConceptImageFolder
from bottlenecks.data.modules import (
    CUBDataModule,
    DiabetesDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    ShapesDataModule,
)
from bottlenecks.data.shapes import ShapesDataset, render_grid, shapes_vocabulary
from bottlenecks.data.tables import DiabetesDataset, DigitsDataset

__all__ = [
    "ArrayDataModule",
    "BottleneckDataModule",
    "CUB200",
    "CUBDataModule",
    "ConceptDataset",
    "ConceptImageFolder",
    "ConceptSubset",
    "DiabetesDataModule",
    "DiabetesDataset",
    "DigitsDataModule",
    "DigitsDataset",
    "FeatureDataModule",
    "ImageFolderDataModule",
    "ShapesDataModule",
    "ShapesDataset",
    "render_grid",
    "shapes_vocabulary",
]
