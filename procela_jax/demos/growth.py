"""Competing theories of how one population grows.

Each theory writes the first variable it declares in ``writes`` from the value
of that variable at the previous step, with a fixed confidence and weight, so
that two of them on one variable make the smallest model in which a policy has
something to resolve (and in which weights and confidences can be fitted):

* :class:`Exponential`: ``x (1 + r)``;
* :class:`Logistic`: ``x + r x (1 - x / K)``;
* :class:`Gompertz`: ``x + r x log(K / x)``.

>>> import jax, procela_jax as pj
>>> from procela_jax.demos.growth import Gompertz, Logistic
>>> N = pj.Variable("N", pj.RangeDomain(0.0, None), init=5.0)
>>> ex = pj.Executive(variables=[N], mechanisms=[
...     Logistic(r=0.25, K=100.0, reads=[N], writes=[N], name="logistic"),
...     Gompertz(r=0.12, K=140.0, reads=[N], writes=[N], name="gompertz"),
... ])
>>> state, traj = ex.run(ex.init(jax.random.key(0)), steps=3)
>>> [round(float(v), 2) for v in traj.value("N")]  # the mean of the two theories (weighted voting)
[6.59, 8.57, 10.99]
"""

from __future__ import annotations

import jax.numpy as jnp

from .._mechanism import Mechanism
from .._record import VariableRecord


class _Growth(Mechanism):
    confidence: float = 0.8
    weight: float = 1.0

    def grow(self, x):
        raise NotImplementedError

    def transform(self, values, key):
        name = self.writes[0]
        return {name: VariableRecord(self.grow(values[name]), confidence=self.confidence, weight=self.weight)}


class Exponential(_Growth):
    """``x (1 + r)``."""

    r: float = 0.1

    def grow(self, x):
        return x * (1 + self.r)


class Logistic(_Growth):
    """``x + r x (1 - x / K)``."""

    r: float = 0.25
    K: float = 100.0

    def grow(self, x):
        return x + self.r * x * (1 - x / self.K)


class Gompertz(_Growth):
    """``x + r x log(K / x)``."""

    r: float = 0.12
    K: float = 140.0

    def grow(self, x):
        return x + self.r * x * jnp.log(self.K / x)
