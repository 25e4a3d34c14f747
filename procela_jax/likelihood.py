"""Observation models for :func:`procela_jax.infer`: how an observation relates
to the simulated value ``m`` at its row.

- ``Normal(sigma)``: ``Normal(m, sigma)``;
- ``Poisson()``: ``Poisson(m)``;
- ``NegativeBinomial(concentration)``: NumPyro's ``NegativeBinomial2(m,
  concentration)`` (mean ``m``, variance ``m + m**2 / concentration``).

A likelihood's own parameter is a number (held fixed) or a NumPyro distribution
(its prior: the parameter is sampled with the model's and reported under its
own name, ``sigma`` or ``concentration``). ``Poisson`` and ``NegativeBinomial``
floor ``m`` at ``1e-9`` (a simulated count of zero under an observed count stays
a finite, very unlikely, event) and need observations that are counts.

>>> import jax.numpy as jnp, numpyro.distributions as dist, procela_jax as pj
>>> lik = pj.likelihood.NegativeBinomial(concentration=dist.Exponential(0.2))
>>> sorted(lik.parameters())
['concentration']
>>> round(float(pj.likelihood.Poisson().log_prob(jnp.array(0.0), jnp.array(0.0))), 6)
-0.0
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from ._errors import ModelError

__all__ = ["FLOOR", "Likelihood", "NegativeBinomial", "Normal", "Poisson"]

#: ``Poisson`` and ``NegativeBinomial`` floor the simulated mean at this value.
FLOOR = 1e-9


def _is_distribution(x) -> bool:
    from numpyro.distributions import Distribution

    return isinstance(x, Distribution)


def _check_positive(owner: str, name: str, value):
    """A positive scale: a number > 0 or a continuous distribution on (0, inf)."""
    if _is_distribution(value):
        support = value.support
        lo = getattr(support, "lower_bound", None)
        if support.is_discrete or lo is None or float(np.min(np.asarray(lo))) < 0:
            raise ModelError(
                f"likelihood.{owner}: the prior of {name!r} must be a continuous distribution on positive "
                f"numbers (e.g. dist.HalfNormal(5.0) or dist.Exponential(0.2)), got {type(value).__name__} "
                f"with support {support}"
            )
        if value.shape() != ():
            raise ModelError(
                f"likelihood.{owner}: the prior of {name!r} must be scalar, got a distribution of shape "
                f"{value.shape()}"
            )
        return value
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ModelError(
            f"likelihood.{owner}: {name} must be a number or a numpyro distribution, got {value!r}"
        ) from None
    if not (math.isfinite(v) and v > 0):
        raise ModelError(f"likelihood.{owner}: {name} must be a finite number > 0, got {v}")
    return v


class Likelihood:
    """Base class of observation models.

    A subclass defines ``parameters() -> {name: number | distribution}`` and
    ``distribution(m, **parameters)`` (a NumPyro distribution of an observation
    whose simulated value is ``m``); ``counts = True`` when observations must be
    non-negative integers.
    """

    counts: bool = False

    def parameters(self) -> dict:
        """``{name: number or numpyro distribution}`` of this likelihood's own parameters."""
        return {}

    def distribution(self, m, **parameters):
        raise NotImplementedError

    def log_prob(self, observed, m, **parameters):
        """Log density of ``observed`` given simulated values ``m`` (elementwise);
        fixed parameters are filled in, sampled ones must be passed.

        >>> import jax.numpy as jnp, procela_jax as pj
        >>> float(pj.likelihood.Normal(sigma=1.0).log_prob(jnp.array(0.0), jnp.array(0.0)))
        -0.918938...
        """
        values = {k: v for k, v in self.parameters().items() if not _is_distribution(v)}
        values.update(parameters)
        return self.distribution(m, **values).log_prob(observed)

    def check_data(self, name: str, observed: np.ndarray) -> None:
        """Raise :class:`ModelError` if ``observed`` (NaN = missing) cannot come from this likelihood."""
        if self.counts:
            v = observed[~np.isnan(observed)]
            bad = v[(v < 0) | (v != np.round(v))]
            if bad.size:
                raise ModelError(
                    f"infer: data[{name!r}] holds {bad[0]!r}, but a {type(self).__name__} likelihood needs "
                    "counts (integers >= 0); use likelihood=pj.likelihood.Normal(sigma=...) for other data"
                )


@dataclasses.dataclass(frozen=True)
class Normal(Likelihood):
    """``observed ~ Normal(m, sigma)``; ``sigma`` a number > 0 or a prior on positive numbers.

    >>> import numpyro.distributions as dist, procela_jax as pj
    >>> pj.likelihood.Normal(sigma=dist.HalfNormal(5.0)).parameters()["sigma"].scale
    5.0
    """

    sigma: object

    def __post_init__(self):
        object.__setattr__(self, "sigma", _check_positive("Normal", "sigma", self.sigma))

    def parameters(self) -> dict:
        return {"sigma": self.sigma}

    def distribution(self, m, sigma):
        from numpyro.distributions import Normal as _Normal

        return _Normal(m, sigma)


@dataclasses.dataclass(frozen=True)
class Poisson(Likelihood):
    """``observed ~ Poisson(max(m, 1e-9))``; observations are counts.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> round(float(pj.likelihood.Poisson().log_prob(jnp.array(2.0), jnp.array(2.0))), 4)
    -1.3069
    """

    counts = True

    def distribution(self, m):
        from numpyro.distributions import Poisson as _Poisson

        return _Poisson(jnp.maximum(m, FLOOR))


@dataclasses.dataclass(frozen=True)
class NegativeBinomial(Likelihood):
    """``observed ~ NegativeBinomial2(max(m, 1e-9), concentration)``: mean ``m``,
    variance ``m + m**2 / concentration`` (large ``concentration``: nearly
    Poisson); observations are counts.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> lik = pj.likelihood.NegativeBinomial(concentration=2.0)
    >>> round(float(lik.log_prob(jnp.array(2.0), jnp.array(2.0))), 4)   # scipy: nbinom.logpmf(2, 2, 0.5)
    -1.674
    """

    concentration: object
    counts = True

    def __post_init__(self):
        object.__setattr__(
            self, "concentration", _check_positive("NegativeBinomial", "concentration", self.concentration)
        )

    def parameters(self) -> dict:
        return {"concentration": self.concentration}

    def distribution(self, m, concentration):
        from numpyro.distributions import NegativeBinomial2

        return NegativeBinomial2(jnp.maximum(m, FLOOR), concentration)
