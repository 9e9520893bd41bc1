"""What is trained: the model families, each in its own package (:mod:`models.resnet`, :mod:`models.mixture`),
and what they share (:mod:`models.family`, the interface and registry; :mod:`models.spec`, the spec keys every
family has; :mod:`models.records`, what a trainer yields; :mod:`models.digits`, the data set and its split).

No Ray, no MLflow, nothing from ``analysis`` or ``sweep``. Importing this package registers the built-in
families (``resnet``, ``bernoulli_mixture``) without importing torch.
"""

from models.family import Family, MetricInfo, Panel, Quantity, ThresholdRule, family_names, get_family, register
from models.mixture.family import MIXTURE
from models.resnet.family import RESNET

register(RESNET)
register(MIXTURE)

__all__ = ["Family", "MetricInfo", "Panel", "Quantity", "ThresholdRule", "family_names", "get_family", "register"]
