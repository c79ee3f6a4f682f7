"""Information-bottleneck objectives: VIB, Cauchy–Schwarz IB (regression), contrastive VIB."""

from bottlenecks.losses.contrastive_vib import ContrastiveVIBLoss, gate_compression, info_nce
from bottlenecks.losses.cs_ib import CSIBLoss
from bottlenecks.losses.vib import VIBLoss, gaussian_kl, gaussian_log_prob, mixture_log_prob

__all__ = [
    "VIBLoss",
    "gaussian_kl",
    "gaussian_log_prob",
    "mixture_log_prob",
    "CSIBLoss",
    "ContrastiveVIBLoss",
    "info_nce",
    "gate_compression",
]
