"""Reasoning operators over a variable's running statistics: anomaly detection,
trend, prediction and rule-based diagnosis.

Each operator is a small :class:`equinox.Module` (its thresholds are leaves, so
they can be traced, vmapped or differentiated) with one pure method of a
:class:`Stats` (``view.stats("X")``); it works under ``jit`` and ``vmap`` and
can be called from invariant conditions, hooks and ``Save.fn``.

Definitions follow the original ``procela``. Where the original returns
``None`` (too little data), the numbers here are NaN and a boolean says whether
the result is defined; where it raises or misbehaves, the choice made here is
documented on the class. Results are pytrees; ``describe()`` and
``direction_name()`` turn codes into text on the host.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._statistics import Stats

#: trend direction codes
TREND_DOWN, TREND_STABLE, TREND_UP = -1, 0, 1
_DIRECTIONS = {TREND_DOWN: "down", TREND_STABLE: "stable", TREND_UP: "up"}


def direction_name(code) -> str:
    """The name (``"down"``, ``"stable"``, ``"up"``) of a trend direction code (host side).

    >>> import procela_jax as pj
    >>> pj.direction_name(-1)
    'down'
    """
    return _DIRECTIONS[int(code)]


def _positive(owner: str, field: str, value):
    if isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"{owner}: {field} must be > 0, got {value!r}")


def _defined(x):
    return ~jnp.isnan(x)


def _clean(ok, x, fill=0.0):
    """``x`` where ``ok``, else ``fill``: the first half of the double-``where`` trick."""
    return jnp.where(ok, x, fill)


def _check_stats(stats, who):
    if not isinstance(stats, Stats):
        raise TypeError(f"{who}: expected the Stats of a variable (view.stats(name)), got {type(stats).__name__}")


# ---- anomaly detection -------------------------------------------------------------
class AnomalyResult(eqx.Module):
    """Outcome of an anomaly detector.

    ``is_anomaly`` (bool), ``score`` (NaN where undefined: the original's ``None``),
    ``threshold``; ``method`` names the detector.
    """

    is_anomaly: Array
    score: Array
    threshold: Array
    method: str = eqx.field(static=True, default="")

    @property
    def defined(self) -> Array:
        """Whether a score could be computed."""
        return _defined(self.score)

    def confidence(self) -> Array:
        """``min(1, score / threshold)`` for an anomaly, NaN otherwise (the original's ``None``).

        >>> import jax.numpy as jnp, procela_jax as pj
        >>> r = pj.AnomalyResult(jnp.asarray(True), jnp.asarray(4.5), jnp.asarray(3.0))
        >>> float(r.confidence())
        1.0
        """
        ok = self.is_anomaly & self.defined
        ratio = _clean(ok, self.score) / jnp.maximum(self.threshold, 1e-9)
        return jnp.where(ok, jnp.minimum(1.0, ratio), jnp.nan)


def _deviation(stats: Stats, centre, threshold, strict: bool, method: str) -> AnomalyResult:
    value, std = stats.last, stats.std
    ok = (stats.count >= 2) & _defined(value) & _defined(centre) & _defined(std) & (std != 0)
    z = jnp.abs(_clean(ok, value) - _clean(ok, centre)) / _clean(ok, std, 1.0)
    threshold = jnp.asarray(threshold, z.dtype)
    hit = (z > threshold) if strict else (z >= threshold)
    return AnomalyResult(ok & hit, jnp.where(ok, z, jnp.nan), threshold, method)


class ZScoreDetector(eqx.Module):
    """The last value's distance from the mean, in standard deviations:
    ``z = |value - mean| / std``, anomalous when ``z >= threshold``.

    Undefined (not anomalous, score NaN) while ``count < 2`` or when ``std == 0``,
    as the original. The statistics include the last value, so ``z`` never
    exceeds ``sqrt(count - 1)``: a threshold of 3 can fire from ``count >= 11`` on.

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=0.0)])
    >>> s = ex.init(jax.random.key(0))
    >>> for x in [0.0] * 10 + [10.0]:
    ...     s = s.set("X", x)
    >>> r = pj.ZScoreDetector(3.0).detect(s.stats("X"))
    >>> bool(r.is_anomaly), round(float(r.score), 3)
    (True, 3.317)
    """

    threshold: float | Array = 3.0

    def __check_init__(self):
        _positive("ZScoreDetector", "threshold", self.threshold)

    def detect(self, stats: Stats) -> AnomalyResult:
        _check_stats(stats, "ZScoreDetector.detect")
        return _deviation(stats, stats.mean, self.threshold, strict=False, method="z-score")


class EWMADetector(eqx.Module):
    """The last value's distance from the running EWMA, in standard deviations:
    ``score = |value - ewma| / std``, anomalous when ``score > threshold``
    (strictly, as the original).

    Difference from the original, which raises while ``count < 2`` or when
    ``std == 0`` (so an EWMA anomaly configuration breaks every invariant check
    of a young variable): here the result is simply not anomalous, with a NaN
    score.

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=0.0)])
    >>> r = pj.EWMADetector().detect(ex.init(jax.random.key(0)).stats("X"))
    >>> bool(r.is_anomaly), bool(r.defined)
    (False, False)
    """

    threshold: float | Array = 3.0

    def __check_init__(self):
        _positive("EWMADetector", "threshold", self.threshold)

    def detect(self, stats: Stats) -> AnomalyResult:
        _check_stats(stats, "EWMADetector.detect")
        return _deviation(stats, stats.ewma, self.threshold, strict=True, method="ewma")


# ---- trend -------------------------------------------------------------------------
class TrendResult(eqx.Module):
    """A trend: ``value`` (EWMA minus mean), ``direction`` (``TREND_DOWN``,
    ``TREND_STABLE``, ``TREND_UP``), ``threshold``; ``valid`` False where the
    original has no trend (``None``), and then ``value`` is NaN."""

    value: Array
    direction: Array
    threshold: Array
    valid: Array

    def confidence(self) -> Array:
        """0 for a stable trend, else ``min(1, |value| / threshold)``; NaN without a trend.

        >>> import jax.numpy as jnp, procela_jax as pj
        >>> t = pj.TrendResult(jnp.asarray(-0.6), jnp.asarray(-1), jnp.asarray(0.3), jnp.asarray(True))
        >>> float(t.confidence())
        1.0
        """
        moving = self.valid & (self.direction != TREND_STABLE)
        ratio = jnp.abs(_clean(self.valid, self.value)) / jnp.maximum(self.threshold, 1e-9)
        conf = jnp.where(moving, jnp.minimum(1.0, ratio), 0.0)
        return jnp.where(self.valid, conf, jnp.nan)

    def zscore(self, std) -> Array:
        """``value / std``; NaN without a trend or when ``std`` is NaN or 0."""
        std = jnp.asarray(std)
        ok = self.valid & _defined(std) & (std != 0)
        return jnp.where(ok, _clean(ok, self.value) / _clean(ok, std, 1.0), jnp.nan)


class TrendOperator(eqx.Module):
    """Trend as the gap between the recent level and the long-run level:
    ``delta = ewma - mean``; stable when ``|delta| < threshold``, else up or down
    by its sign.

    The threshold is absolute (``threshold=``, default 3.0 as the original's
    operator), or relative to the spread (``std_factor=``: ``std_factor * std``,
    as the original's ``StatisticalDomain.trend_threshold``; the original
    variable's default configuration uses the absolute 0.3). No trend
    (``valid`` False) while ``count < 2``, and for a relative threshold when
    ``std`` is 0 (where the original fails on a zero threshold).

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=0.0)])
    >>> s = ex.init(jax.random.key(0))
    >>> for x in [0.0, 0.0, 0.0, 0.0, 10.0]:   # mean 10/6, EWMA 3
    ...     s = s.set("X", x)
    >>> t = pj.TrendOperator(threshold=0.3).analyze(s.stats("X"))
    >>> pj.direction_name(t.direction), round(float(t.value), 4)
    ('up', 1.3333)
    """

    threshold: float | Array | None = 3.0
    std_factor: float | Array | None = None

    def __check_init__(self):
        if (self.threshold is None) == (self.std_factor is None):
            raise ValueError("TrendOperator: give exactly one of threshold= (absolute) or std_factor=")
        if self.threshold is not None:
            _positive("TrendOperator", "threshold", self.threshold)
        else:
            _positive("TrendOperator", "std_factor", self.std_factor)

    def analyze(self, stats: Stats) -> TrendResult:
        _check_stats(stats, "TrendOperator.analyze")
        mean, ewma = stats.mean, stats.ewma
        if self.threshold is not None:
            thr = jnp.asarray(self.threshold, mean.dtype) * jnp.ones_like(mean)
        else:
            thr = jnp.asarray(self.std_factor, mean.dtype) * stats.std
        valid = (stats.count >= 2) & _defined(mean) & _defined(ewma) & _defined(thr) & (thr > 0)
        delta = _clean(valid, ewma) - _clean(valid, mean)
        stable = jnp.abs(delta) < _clean(valid, thr, 1.0)
        direction = jnp.where(stable, TREND_STABLE, jnp.where(delta > 0, TREND_UP, TREND_DOWN))
        return TrendResult(
            value=jnp.where(valid, delta, jnp.nan),
            direction=jnp.where(valid, direction, TREND_STABLE).astype(jnp.int32),
            threshold=thr,
            valid=valid,
        )


# ---- prediction --------------------------------------------------------------------
class PredictionResult(eqx.Module):
    """Predictions for steps ``1..horizon`` (``value``, shape ``(..., horizon)``),
    a ``confidence`` (NaN where the original gives ``None``) and ``valid``
    (False where the original returns no value or raises; ``value`` is then NaN)."""

    value: Array
    confidence: Array
    valid: Array


def _horizon(horizon, who):
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"{who}: horizon must be an int >= 1, got {horizon!r}")
    return horizon


def _repeat(x, horizon):
    return jnp.repeat(jnp.asarray(x)[..., None], horizon, axis=-1)


class LastPredictor(eqx.Module):
    """Repeats the last value. Without a value: NaN (``valid`` False), or zeros with
    ``allow_none=True`` (the original raises unless ``allow_none``).

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=2.5)])
    >>> pj.LastPredictor().predict(ex.init(jax.random.key(0)).stats("X"), horizon=2).value.tolist()
    [2.5, 2.5]
    """

    allow_none: bool = eqx.field(static=True, default=False)

    def predict(self, stats: Stats, horizon: int = 1) -> PredictionResult:
        _check_stats(stats, "LastPredictor.predict")
        h = _horizon(horizon, "LastPredictor.predict")
        last = stats.last
        ok = _defined(last)
        fill = 0.0 if self.allow_none else jnp.nan
        value = _repeat(jnp.where(ok, last, fill), h)
        return PredictionResult(value, jnp.full(jnp.shape(last), jnp.nan, last.dtype), ok | self.allow_none)


class MeanPredictor(eqx.Module):
    """The historical mean, with the mean confidence as its confidence.

    The original returns the mean as one number whatever the horizon; here it is
    repeated over ``horizon`` steps so every predictor has the same shape.

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=2.0)])
    >>> s = ex.init(jax.random.key(0)).set("X", 4.0)
    >>> float(pj.MeanPredictor().predict(s.stats("X")).value[0])
    3.0
    """

    def predict(self, stats: Stats, horizon: int = 1) -> PredictionResult:
        _check_stats(stats, "MeanPredictor.predict")
        h = _horizon(horizon, "MeanPredictor.predict")
        mean = stats.mean
        return PredictionResult(_repeat(mean, h), stats.confidence, _defined(mean))


class EWMAPredictor(eqx.Module):
    """Repeats the variable's running EWMA, with the mean confidence.

    The EWMA is the one the variable maintains with its own
    ``Variable(ewma_alpha=...)``; the original's predictor takes an ``alpha`` it
    never uses, so this one takes none.

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=0.0)])
    >>> s = ex.init(jax.random.key(0)).set("X", 10.0)
    >>> float(pj.EWMAPredictor().predict(s.stats("X")).value[0])
    3.0
    """

    def predict(self, stats: Stats, horizon: int = 1) -> PredictionResult:
        _check_stats(stats, "EWMAPredictor.predict")
        h = _horizon(horizon, "EWMAPredictor.predict")
        ewma = stats.ewma
        return PredictionResult(_repeat(ewma, h), stats.confidence, _defined(ewma))


class TrendPredictor(eqx.Module):
    """Linear extrapolation of the trend from the last value:
    ``last + delta * k * extrapolation_factor * w`` for step ``k``, with ``w`` the
    trend's confidence clipped to ``[0, 1]`` (``use_confidence=True``) or 1; a
    stable trend repeats the last value.

    The trend comes from ``trend`` (a :class:`TrendOperator`, default threshold
    0.3 as the original variable's default configuration) or is passed to
    ``predict``. Differences from the original: a downward trend extrapolates
    downward (the original subtracts the already negative ``delta`` and so
    forecasts a rise); without a trend the result is NaN with ``valid`` False
    (the original raises).

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=10.0)])
    >>> s = ex.init(jax.random.key(0))
    >>> for x in [10.0, 10.0, 2.0]:   # mean 8, EWMA 7.6: down by 0.4
    ...     s = s.set("X", x)
    >>> p = pj.TrendPredictor().predict(s.stats("X"), horizon=2)
    >>> [round(v, 4) for v in p.value.tolist()]
    [1.6, 1.2]
    """

    trend: TrendOperator = TrendOperator(threshold=0.3)
    extrapolation_factor: float | Array = 1.0
    use_confidence: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        _positive("TrendPredictor", "extrapolation_factor", self.extrapolation_factor)

    def predict(self, stats: Stats, horizon: int = 1, trend: TrendResult | None = None) -> PredictionResult:
        _check_stats(stats, "TrendPredictor.predict")
        h = _horizon(horizon, "TrendPredictor.predict")
        trend = self.trend.analyze(stats) if trend is None else trend
        last = stats.last
        ok = trend.valid & _defined(last)
        if self.use_confidence:
            w = jnp.clip(_clean(trend.valid, trend.confidence()), 0.0, 1.0)
        else:
            w = jnp.ones_like(last)
        delta = _clean(ok, trend.value)
        base = _clean(ok, last)
        k = jnp.arange(1, h + 1, dtype=last.dtype)
        moving = (trend.direction != TREND_STABLE)[..., None]
        step = delta[..., None] * k * self.extrapolation_factor * w[..., None]
        value = jnp.where(moving, base[..., None] + step, base[..., None] * jnp.ones_like(k))
        value = jnp.where(ok[..., None], value, jnp.nan)
        return PredictionResult(value, jnp.full(jnp.shape(last), jnp.nan, last.dtype), ok)


# ---- diagnosis ---------------------------------------------------------------------
class Diagnosis(eqx.Module):
    """Outcome of a diagnoser: a ``confidence`` in ``[0, 1]`` and a boolean flag per
    possible cause (``causes``, last axis in the order of ``labels``).
    ``describe()`` lists the flagged causes as text (host side, one scenario).
    """

    confidence: Array
    causes: Array
    labels: tuple[str, ...] = eqx.field(static=True)

    @property
    def count(self) -> Array:
        """How many causes are flagged."""
        return jnp.sum(self.causes, axis=-1)

    def describe(self) -> list[str]:
        flags = [bool(f) for f in jnp.asarray(self.causes).reshape(-1, len(self.labels))[0]]
        if jnp.ndim(self.causes) > 1:
            raise ValueError("describe() reads one scenario; index the batched result first")
        return [lab for lab, f in zip(self.labels, flags) if f]


def _trend_or_none(trend, stats):
    """(valid, direction, value, confidence) of a trend, or all-absent for None."""
    if trend is None:
        false = jnp.zeros(jnp.shape(stats.count), bool)
        zero = jnp.zeros(jnp.shape(stats.count), stats.sum.dtype)
        return false, jnp.zeros(jnp.shape(stats.count), jnp.int32), zero, zero, zero + 1.0
    if not isinstance(trend, TrendResult):
        raise TypeError(f"trend must be a TrendResult (TrendOperator(...).analyze(stats)), got {type(trend).__name__}")
    v = trend.valid
    return v, trend.direction, _clean(v, trend.value), _clean(v, trend.confidence()), _clean(v, trend.threshold, 1.0)


def _anomaly_or_none(anomaly, stats):
    if anomaly is None:
        return None
    if not isinstance(anomaly, AnomalyResult):
        raise TypeError(f"anomaly must be an AnomalyResult (a detector's detect(stats)), got {type(anomaly).__name__}")
    return anomaly


ANOMALY_CAUSES = (
    "extreme anomaly (score above 5): likely a critical failure",
    "significant anomaly (score above 3): likely a fault in the system",
    "minor anomaly: possibly an early warning",
    "departure from the historical distribution (z-score detector)",
    "departure from the recent smoothed level (EWMA detector)",
    "anomaly during an upward trend",
    "anomaly during a downward trend",
    "anomaly against a stable pattern",
    "high variability (std above a tenth of the mean): possibly a measurement problem",
    "unexplained anomaly",
    "needs a closer look",
    "watch whether it recurs",
)


class AnomalyDiagnoser(eqx.Module):
    """Rule-based causes of an anomaly, with the original's confidence.

    When the anomaly's score reaches ``severity_threshold``, causes are drawn
    from its size (above 5 extreme, above 3 significant, else minor), the
    detector, the trend's direction (when a trend is given) and the variability
    (``std / max(mean, 1e-9) > 0.1``, the original's rule, which flags every
    negative mean); ``confidence = 0.5 min(score/10, 1) + 0.3 min(n/5, 1) +
    0.2 s`` with ``n`` causes and ``s`` 0.9 for a severe anomaly or high
    variability, else 0.5. Otherwise the generic causes with confidence 0.3
    (``include_generic_causes=True``) or none with confidence 0.

    ``anomaly`` defaults to ``ZScoreDetector(3.0).detect(stats)`` (the
    original's default view). Difference from the original: the z-score detector
    adds its cause (the original looks for the text "z-score" in the method name
    "ZScoreDetector" and never finds it), so a z-score diagnosis counts one more
    cause.

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=0.0)])
    >>> s = ex.init(jax.random.key(0))
    >>> for x in [0.0] * 10 + [10.0]:
    ...     s = s.set("X", x)
    >>> d = pj.AnomalyDiagnoser().diagnose(s.stats("X"))
    >>> round(float(d.confidence), 4), len(d.describe())
    (0.5258, 3)
    """

    severity_threshold: float | Array = 2.0
    include_generic_causes: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        _positive("AnomalyDiagnoser", "severity_threshold", self.severity_threshold)

    def diagnose(self, stats: Stats, anomaly: AnomalyResult | None = None, trend: TrendResult | None = None) -> Diagnosis:
        _check_stats(stats, "AnomalyDiagnoser.diagnose")
        anomaly = _anomaly_or_none(anomaly, stats)
        if anomaly is None:
            anomaly = ZScoreDetector(3.0).detect(stats)
        t_ok, t_dir, _, _, _ = _trend_or_none(trend, stats)
        score = anomaly.score
        scored = anomaly.is_anomaly & anomaly.defined
        s = _clean(scored, score)
        met = scored & (s >= self.severity_threshold)
        mean, std = stats.mean, stats.std
        var_ok = _defined(mean) & _defined(std)
        ratio = _clean(var_ok, std) / jnp.maximum(_clean(var_ok, mean), 1e-9)
        high_var = var_ok & (ratio > 0.1)
        z_method, e_method = anomaly.method == "z-score", anomaly.method == "ewma"
        specific = [
            met & (s > 5.0),
            met & (s > 3.0) & (s <= 5.0),
            met & (s <= 3.0),
            met & z_method,
            met & e_method,
            met & t_ok & (t_dir == TREND_UP),
            met & t_ok & (t_dir == TREND_DOWN),
            met & t_ok & (t_dir == TREND_STABLE),
            met & high_var,
        ]
        n = sum(f.astype(s.dtype) for f in specific)
        spec = jnp.where(specific[0] | specific[1] | specific[8], 0.9, jnp.where(specific[2], 0.5, 0.7))
        conf = 0.5 * jnp.minimum(s / 10.0, 1.0) + 0.3 * jnp.minimum(n / 5.0, 1.0) + 0.2 * spec
        conf = jnp.clip(conf, 0.0, 1.0)
        generic = ~met & self.include_generic_causes
        flags = specific + [
            generic,
            generic & anomaly.is_anomaly & (s > 3.0),
            generic & anomaly.is_anomaly & ~(s > 3.0),
        ]
        confidence = jnp.where(met, conf, jnp.where(generic, 0.3, 0.0))
        return Diagnosis(confidence, jnp.stack(jnp.broadcast_arrays(*flags), axis=-1), ANOMALY_CAUSES)


STATISTICAL_CAUSES = (
    "high coefficient of variation",
    "large spread around a zero mean",
    "wide range relative to the mean",
    "significant upward drift",
    "significant downward drift",
    "minor upward drift",
    "minor downward drift",
    "upward drift",
    "downward drift",
)


class StatisticalDiagnoser(eqx.Module):
    """Causes read from the statistics alone: variability and drift.

    Variability (from ``count >= 2``): ``|std / mean| > variability_threshold``,
    or for a zero mean ``std > 10``; and ``(max - min) / |mean| > 3``. Drift (when
    a trend is given and is not stable, with ``|delta| > drift_sensitivity``):
    significant when ``|delta| / std > 1``, minor otherwise (none when
    ``std == 0``). ``confidence = 0.4 [variability] + 0.4 [drift] + 0.2
    [anomaly]``, times ``min(1 + 0.2 (k - 1), 1.5)`` when ``k >= 2`` of these
    patterns are present, clipped to ``[0, 1]``: the original's definition.
    ``anomaly`` defaults to ``ZScoreDetector(3.0).detect(stats)``. The original's
    ``skewness_threshold`` is not used by its rules and is left out.

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=1.0)])
    >>> s = ex.init(jax.random.key(0)).set("X", 9.0)
    >>> d = pj.StatisticalDiagnoser().diagnose(s.stats("X"))
    >>> round(float(d.confidence), 6), d.describe()
    (0.4, ['high coefficient of variation'])
    """

    variability_threshold: float | Array = 0.5
    drift_sensitivity: float | Array = 0.1

    def __check_init__(self):
        _positive("StatisticalDiagnoser", "variability_threshold", self.variability_threshold)
        _positive("StatisticalDiagnoser", "drift_sensitivity", self.drift_sensitivity)

    def diagnose(self, stats: Stats, anomaly: AnomalyResult | None = None, trend: TrendResult | None = None) -> Diagnosis:
        _check_stats(stats, "StatisticalDiagnoser.diagnose")
        anomaly = _anomaly_or_none(anomaly, stats)
        if anomaly is None:
            anomaly = ZScoreDetector(3.0).detect(stats)
        mean, std = stats.mean, stats.std
        enough = stats.count >= 2
        m_ok = enough & _defined(mean)
        ms_ok = m_ok & _defined(std)
        mu, sd = _clean(m_ok, mean), _clean(ms_ok, std)
        nonzero = mu != 0
        safe_mu = jnp.where(nonzero, mu, 1.0)
        cv = jnp.abs(sd / safe_mu)
        high_cv = ms_ok & nonzero & (cv > self.variability_threshold)
        zero_spread = ms_ok & ~nonzero & (sd > 10)
        rng_ok = m_ok & nonzero & jnp.isfinite(stats.min) & jnp.isfinite(stats.max)
        span = _clean(rng_ok, stats.max) - _clean(rng_ok, stats.min)
        wide = rng_ok & (span / jnp.abs(safe_mu) > 3.0)
        t_ok, t_dir, t_val, _, _ = _trend_or_none(trend, stats)
        a = jnp.abs(t_val)
        drifting = t_ok & (a > self.drift_sensitivity) & (t_dir != TREND_STABLE)
        s_def = _defined(std)
        s_pos = s_def & (_clean(s_def, std) > 0)
        z = a / jnp.where(s_pos, _clean(s_def, std), 1.0)
        up, down = t_dir == TREND_UP, t_dir == TREND_DOWN
        sig = drifting & s_pos & (z > 1.0)
        minor = drifting & s_pos & ~(z > 1.0)
        plain = drifting & ~s_def
        flags = [high_cv, zero_spread, wide, sig & up, sig & down, minor & up, minor & down, plain & up, plain & down]
        high_var = high_cv | zero_spread | wide
        drift = sig | minor | plain
        anom = anomaly.is_anomaly
        dtype = mu.dtype
        score = (
            jnp.asarray(0.0, dtype)
            + jnp.where(high_var, 0.4, 0.0)
            + jnp.where(drift, 0.4, 0.0)
            + jnp.where(anom, 0.2, 0.0)
        )
        k = high_var.astype(jnp.int32) + drift.astype(jnp.int32) + anom.astype(jnp.int32)
        score = jnp.where(k > 1, score * jnp.minimum(1.0 + 0.2 * (k - 1), 1.5), score)
        score = jnp.clip(score, 0.0, 1.0)
        return Diagnosis(score, jnp.stack(jnp.broadcast_arrays(*flags), axis=-1), STATISTICAL_CAUSES)


TREND_CAUSES = (
    "downward trend: possible degradation",
    "confident downward trend",
    "upward trend: possible improvement or overshoot",
    "confident upward trend",
    "stable direction despite a notable magnitude",
    "stable",
    "strong trend",
    "significant trend",
    "minor trend",
    "trend beyond its decision threshold",
    "weak trend evidence (confidence below 0.3)",
    "strong trend evidence (confidence above 0.7)",
    "contradiction: stable direction with a significant magnitude",
    "trend close to its decision threshold",
    "trend large against the historical variability (z above 2)",
    "trend noticeable against the historical variability (z above 1)",
    "severe anomaly with a downward trend",
    "anomaly with a downward trend",
    "severe anomaly with an upward trend",
    "anomaly with an upward trend",
)


class TrendDiagnoser(eqx.Module):
    """Causes read from a trend, with the original's confidence
    ``0.4 m + 0.3 min(n/5, 1) + 0.3 c``: ``m`` 0.8 when ``|delta| >
    strong_threshold``, 0.6 when ``> significance_threshold``, else 0.3; ``n``
    causes; ``c`` the trend's confidence.

    Needs ``trend`` (``TrendOperator(...).analyze(stats)``); where it is not
    valid the diagnosis is empty with confidence 0 (the original raises unless
    ``require_confidence=False``, then returns that). ``anomaly`` (optional, no
    default here, as the trend diagnosis only correlates it) adds the
    anomaly-with-trend causes.

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=0.0)])
    >>> s = ex.init(jax.random.key(0))
    >>> for x in [0.0, 0.0, 0.0, 0.0, 10.0]:
    ...     s = s.set("X", x)
    >>> st = s.stats("X")
    >>> d = pj.TrendDiagnoser().diagnose(st, trend=pj.TrendOperator(threshold=0.3).analyze(st))
    >>> round(float(d.confidence), 4), int(d.count)
    (0.92, 5)
    """

    significance_threshold: float | Array = 0.2
    strong_threshold: float | Array = 0.5

    def __check_init__(self):
        _positive("TrendDiagnoser", "significance_threshold", self.significance_threshold)
        if isinstance(self.strong_threshold, (int, float)) and isinstance(self.significance_threshold, (int, float)):
            if not self.strong_threshold > self.significance_threshold:
                raise ValueError(
                    f"TrendDiagnoser: strong_threshold ({self.strong_threshold}) must be above "
                    f"significance_threshold ({self.significance_threshold})"
                )

    def diagnose(self, stats: Stats, anomaly: AnomalyResult | None = None, trend: TrendResult | None = None) -> Diagnosis:
        _check_stats(stats, "TrendDiagnoser.diagnose")
        if trend is None:
            raise TypeError("TrendDiagnoser.diagnose needs trend=TrendOperator(...).analyze(stats)")
        anomaly = _anomaly_or_none(anomaly, stats)
        ok, direction, value, tconf, thr = _trend_or_none(trend, stats)
        a = jnp.abs(value)
        sig_t, strong_t = self.significance_threshold, self.strong_threshold
        up, down, stable = direction == TREND_UP, direction == TREND_DOWN, direction == TREND_STABLE
        moving = ~stable
        std = stats.std
        s_ok = _defined(std) & (_clean(_defined(std), std) > 0)
        z = a / jnp.where(s_ok, _clean(_defined(std), std), 1.0)
        if anomaly is not None:
            scored = anomaly.is_anomaly & anomaly.defined
            sc = _clean(scored, anomaly.score)
        else:
            scored = jnp.zeros_like(ok)
            sc = jnp.zeros_like(a)
        flags = [
            down,
            down & (tconf > 0.8),
            up,
            up & (tconf > 0.8),
            stable & (a > sig_t / 2),
            stable & ~(a > sig_t / 2),
            moving & (a > strong_t),
            moving & ~(a > strong_t) & (a > sig_t),
            moving & ~(a > sig_t) & (a > 0),
            a > thr,
            tconf < 0.3,
            tconf > 0.7,
            stable & (a > sig_t),
            jnp.abs(a - thr) < 0.1 * thr,
            s_ok & (z > 2.0),
            s_ok & ~(z > 2.0) & (z > 1.0),
            scored & down & (sc > 3.0),
            scored & down & ~(sc > 3.0),
            scored & up & (sc > 3.0),
            scored & up & ~(sc > 3.0),
        ]
        flags = [f & ok for f in flags]
        n = sum(f.astype(a.dtype) for f in flags)
        m = jnp.where(a > strong_t, 0.8, jnp.where(a > sig_t, 0.6, 0.3))
        conf = jnp.clip(0.4 * m + 0.3 * jnp.minimum(n / 5.0, 1.0) + 0.3 * tconf, 0.0, 1.0)
        return Diagnosis(jnp.where(ok, conf, 0.0), jnp.stack(jnp.broadcast_arrays(*flags), axis=-1), TREND_CAUSES)
