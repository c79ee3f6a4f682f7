"""Bottleneck layers: every class maps features ``(batch, in_features)`` to a
:class:`BottleneckOutput` (see :mod:`bottlenecks.layers.base`)."""

from bottlenecks.layers.base import CONCEPT_LOSS, Bottleneck, BottleneckOutput, ConceptLayer, Units
from bottlenecks.layers.cem import ConceptEmbeddingBottleneck
from bottlenecks.layers.codebook_features import CodebookFeatures
from bottlenecks.layers.concept import ConceptBottleneck, IdentityBottleneck
from bottlenecks.layers.ecbm import EnergyConceptBottleneck
from bottlenecks.layers.key_value import DiscreteKeyValueBottleneck
from bottlenecks.layers.label_free import LaBoBottleneck, LabelFreeCBM
from bottlenecks.layers.posthoc import PosthocConceptBottleneck
from bottlenecks.layers.quantize import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)
from bottlenecks.layers.sparse_autoencoder import DiscoverThenNameCBM, SparseAutoencoder
from bottlenecks.layers.sparse_cbm import SparseConceptBottleneck
from bottlenecks.layers.surgery import CodebookModel, insert_codebooks
from bottlenecks.layers.stochastic import (
    ContrastiveVIBBottleneck,
    CSIBBottleneck,
    GaussianBottleneck,
    NoisyBottleneck,
)

__all__ = [
    "CONCEPT_LOSS",
    "Bottleneck",
    "BottleneckOutput",
    "ConceptLayer",
    "Units",
    "insert_codebooks",
    "CSIBBottleneck",
    "CodebookFeatures",
    "CodebookModel",
    "ConceptBottleneck",
    "ConceptEmbeddingBottleneck",
    "ContrastiveVIBBottleneck",
    "DiscoverThenNameCBM",
    "DiscreteKeyValueBottleneck",
    "EnergyConceptBottleneck",
    "FiniteScalarQuantizer",
    "GaussianBottleneck",
    "IdentityBottleneck",
    "LaBoBottleneck",
    "LabelFreeCBM",
    "LookupFreeQuantizer",
    "NoisyBottleneck",
    "PosthocConceptBottleneck",
    "ResidualVectorQuantizer",
    "SparseAutoencoder",
    "SparseConceptBottleneck",
    "VectorQuantizer",
]

#: every bottleneck class of the package (for tests and tools that enumerate them)
BOTTLENECKS = [
    ConceptBottleneck,
    ConceptEmbeddingBottleneck,
    EnergyConceptBottleneck,
    PosthocConceptBottleneck,
    IdentityBottleneck,
    VectorQuantizer,
    ResidualVectorQuantizer,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    CodebookFeatures,
    DiscreteKeyValueBottleneck,
    GaussianBottleneck,
    CSIBBottleneck,
    ContrastiveVIBBottleneck,
    NoisyBottleneck,
    LabelFreeCBM,
    LaBoBottleneck,
    SparseConceptBottleneck,
    DiscoverThenNameCBM,
]
