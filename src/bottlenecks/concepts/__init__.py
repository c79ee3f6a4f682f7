"""Concept banks (named vectors in an encoder's feature space) and concept-set files.

* :mod:`bottlenecks.concepts.bank` — :class:`ConceptBank` from CAVs (one batched solve),
  from text embeddings, or from a file; :func:`encoder_id`.
* :mod:`bottlenecks.concepts.sets` — LaBo ``class2concepts.json``, Label-free CBM ``.txt``,
  CSV concept sets (:func:`load_concept_set`) and class–concept priors (:func:`load_prior`).
"""

from bottlenecks.concepts.bank import BANK_FORMAT, ConceptBank, check_concept_list, encoder_id, learn_cavs
from bottlenecks.concepts.sets import ConceptSet, load_concept_set, load_prior, shapes_concept_set

__all__ = [
    "BANK_FORMAT",
    "ConceptBank",
    "ConceptSet",
    "check_concept_list",
    "encoder_id",
    "learn_cavs",
    "load_concept_set",
    "load_prior",
    "shapes_concept_set",
]
