"""bottlenecks: interpretable models on frozen encoders.

A frozen encoder, then a bottleneck whose units a person can read and change
(concepts, discrete codes, key–value pairs, stochastic codes), then a task head.

The names a user needs are importable from here (loaded on first use)::

    from bottlenecks import BottleneckModel, ConceptBottleneck, ShapesDataModule, intervene

Subpackages: :mod:`bottlenecks.layers` (bottlenecks and their contract),
:mod:`bottlenecks.models` (the LightningModule and training stages),
:mod:`bottlenecks.data`, :mod:`bottlenecks.encoders`, :mod:`bottlenecks.losses`,
:mod:`bottlenecks.estimators`, :mod:`bottlenecks.analysis`, :mod:`bottlenecks.continual`.
The command line is ``bottlenecks fit --config configs/X.yaml`` (:mod:`bottlenecks.cli`).
See ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: public name -> the module that defines it
_EXPORTS = {
    # the contract and every bottleneck
    "Bottleneck": "bottlenecks.layers",
    "BottleneckOutput": "bottlenecks.layers",
    "ConceptLayer": "bottlenecks.layers",
    "Units": "bottlenecks.layers",
    "ConceptBottleneck": "bottlenecks.layers",
    "IdentityBottleneck": "bottlenecks.layers",
    "ConceptEmbeddingBottleneck": "bottlenecks.layers",
    "EnergyConceptBottleneck": "bottlenecks.layers",
    "VectorQuantizer": "bottlenecks.layers",
    "ResidualVectorQuantizer": "bottlenecks.layers",
    "FiniteScalarQuantizer": "bottlenecks.layers",
    "LookupFreeQuantizer": "bottlenecks.layers",
    "CodebookFeatures": "bottlenecks.layers",
    "insert_codebooks": "bottlenecks.layers",
    "DiscreteKeyValueBottleneck": "bottlenecks.layers",
    "GaussianBottleneck": "bottlenecks.layers",
    "CSIBBottleneck": "bottlenecks.layers",
    "ContrastiveVIBBottleneck": "bottlenecks.layers",
    "NoisyBottleneck": "bottlenecks.layers",
    # model and training
    "BottleneckModel": "bottlenecks.models",
    "CBMTrainingMode": "bottlenecks.models",
    "Stage": "bottlenecks.models",
    "TrainingStages": "bottlenecks.models",
    # data and encoders
    "ArrayDataModule": "bottlenecks.data",
    "ShapesDataModule": "bottlenecks.data",
    "ImageFolderDataModule": "bottlenecks.data",
    "CUBDataModule": "bottlenecks.data",
    "DigitsDataModule": "bottlenecks.data",
    "DiabetesDataModule": "bottlenecks.data",
    "build_encoder": "bottlenecks.encoders",
    "build_text_encoder": "bottlenecks.encoders",
    "list_encoders": "bottlenecks.encoders",
    "FeatureCache": "bottlenecks.encoders",
    # analysis
    "intervene": "bottlenecks.analysis",
    "intervention_curve": "bottlenecks.analysis",
    "concept_leakage": "bottlenecks.analysis",
    "linear_probe": "bottlenecks.analysis",
    "InformationPlane": "bottlenecks.analysis",
    "unit_report": "bottlenecks.analysis",
    "build_report": "bottlenecks.analysis",
    # estimators
    "KSG": "bottlenecks.estimators",
    "BinningMI": "bottlenecks.estimators",
    # command line
    "main": "bottlenecks.cli",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bottlenecks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
