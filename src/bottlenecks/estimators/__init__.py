"""Mutual-information and entropy estimators.

:func:`estimate_mi` ``(x, y, method="auto")`` runs a named estimator or chooses one from the
data and says which and why (``result.method``, ``.settings``, ``.reason``).

Every estimator is a class with one verb, ``estimate(x, y, z=None) -> MIResult`` (also
``estimator(x, y)``), values in nats unless built with ``units="bits"``. See
``docs/information.md`` for which to use when.

==========================  =====================================================  ===========
estimator                   what it is for                                         conditional
==========================  =====================================================  ===========
:class:`KSG`                continuous, low-dimensional; KSG variants 1 and 2;     yes (v1)
                            Ross's estimator for continuous x / discrete y
:class:`BinningMI`          discrete or binned variables; information planes       yes
                            (fixed bins for tanh, equal-mass bins for ReLU)
:class:`KernelCSQMI`        Cauchy–Schwarz quadratic MI (kernel, differentiable)   no
:class:`MatrixRenyiMI`      matrix-based Rényi alpha-order MI                      yes
:class:`NeuralMI`           MINE / NWJ / InfoNCE critics, high dimension           no
:class:`NoisyCompressedMI`  noise + PCA + k-NN, for wide layers                    no
:class:`GaussianMI`         parametric baseline, exact for Gaussians               yes
==========================  =====================================================  ===========
"""

from bottlenecks.estimators._base import MIEstimator, MIResult
from bottlenecks.estimators.auto import METHODS, AutoMI, estimate_mi, normal_scores
from bottlenecks.estimators.binning import BinningMI, Discretizer, entropy_of_symbols
from bottlenecks.estimators.gaussian import GaussianMI
from bottlenecks.estimators.kernel import (
    KernelCSQMI,
    MatrixRenyiMI,
    bandwidth,
    conditional_cs_divergence,
    cs_divergence,
    cs_qmi,
    gaussian_gram,
)
from bottlenecks.estimators.knn import KSG
from bottlenecks.estimators.neural import Critic, CriticTrainer, NeuralMI, dv_bound, infonce_bound, nwj_bound
from bottlenecks.estimators.noisy import NoisyCompressedMI, pca_reduce
from bottlenecks.estimators.resampling import confidence_interval

__all__ = [
    "estimate_mi",
    "METHODS",
    "AutoMI",
    "normal_scores",
    "MIEstimator",
    "MIResult",
    "KSG",
    "BinningMI",
    "Discretizer",
    "entropy_of_symbols",
    "GaussianMI",
    "KernelCSQMI",
    "MatrixRenyiMI",
    "bandwidth",
    "gaussian_gram",
    "cs_divergence",
    "cs_qmi",
    "conditional_cs_divergence",
    "NeuralMI",
    "Critic",
    "CriticTrainer",
    "infonce_bound",
    "nwj_bound",
    "dv_bound",
    "NoisyCompressedMI",
    "pca_reduce",
    "confidence_interval",
]
