"""bottlenecks: interpretable models on frozen encoders.

A frozen encoder, then a bottleneck whose units a person can read and change
(concepts, discrete codes, key–value pairs, stochastic codes), then a task head.
See README.md for the quick start and ``bottlenecks.layers`` for the bottlenecks.
"""

__version__ = "0.2.0"
