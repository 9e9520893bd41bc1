"""What is trained, and the model families that say how (:mod:`models.family`).

Importing this package registers the built-in families (``resnet``, ``bernoulli_mixture``) without
importing torch; ``ResNet``, ``Block`` and ``parameter_count`` (the ResNet's) load torch on first use.
"""

from typing import Any

from models.family import Family, MetricInfo, family_names, get_family, register
from models.mixture_family import MIXTURE
from models.resnet_family import RESNET

register(RESNET)
register(MIXTURE)

_LAZY = {"Block", "ResNet", "parameter_count"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from models import resnet

        return getattr(resnet, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = ["Block", "Family", "MetricInfo", "ResNet", "family_names", "get_family", "parameter_count", "register"]
