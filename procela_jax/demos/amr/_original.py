"""The AMR study on the original ``procela`` library (for comparison and timing).

Built from the study's specification with the original library's own Variables,
Mechanisms, policies, SystemInvariants and Executive, and its random streams (the
world from numpy ``default_rng(42)``, the theories from ``default_rng(seed)``), so
that :func:`~procela_jax.demos.amr.run_protocol` with ``noise="numpy"`` can be
checked against it run for run. Needs ``procela`` (a test dependency).
"""

from __future__ import annotations

import logging

import numpy as np
import procela as pc

from ._model import THEORIES
from ._protocol import ACTIVE


class OriginalStudy:
    """One run of the AMR study on the original ``procela`` (its Variables, Mechanisms,
    policies, SystemInvariants and Executive), with the original's random streams: the
    world draws from ``default_rng(42)``, the theories from ``default_rng(seed)``."""

    def __init__(self, setting, seed):
        rd = pc.RangeDomain
        self.v = v = {}
        for name, lo, hi in [("colonized", 0, 100), ("antibiotic_usage", 0, 50), ("environmental_load", 0, 100),
                             ("regime", 0, 2), ("coverage_0", 0, 1), ("coverage_1", 0, 1), ("coverage_2", 0, 1),
                             ("policy_fragility", 0, 1)]:
            v[name] = pc.Variable(name=name, domain=rd(float(lo), float(hi)), policy=None)
        for name in ("error_colonized", "error_baseline_colonized"):
            v[name] = pc.Variable(name=name, domain=pc.RealDomain(), policy=None)
        v["intervention_code"] = pc.Variable(name="intervention_code", domain=rd(0.0, 3.0),
                                             policy=pc.WeightedConfidencePolicy())
        for name in ("predicted_colonized", "baseline_colonized"):
            v[name] = pc.Variable(name=name, domain=rd(0.0, 100.0), policy=pc.WeightedConfidencePolicy())
        for name, x in (("colonized", 10.0), ("antibiotic_usage", 20.0), ("environmental_load", 10.0),
                        ("intervention_code", 0.0)):
            v[name].init(pc.VariableRecord(value=x, confidence=1.0))
        v["regime"].set(pc.VariableRecord(value=0.0, confidence=1.0))
        logger = logging.getLogger("procela_jax.tests.amr")
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        self.ex = pc.Executive(logger=logger)
        self.ex.set_rng(np.random.default_rng(seed))
        self.world_rng = np.random.default_rng(42)
        self.theories = [self._theory(*row) for row in THEORIES]
        for m in self.theories:
            self.ex.add_mechanism(m)
        self.family = [[m for m, row in zip(self.theories, THEORIES) if row[1] == f] for f in range(3)]
        self.smoothed = [None] * 3
        self.frag = []
        self.events = {"fragility": 0, "coverage": 0, "probe": 0, "emergency": 0}
        on = ACTIVE[setting]
        for unit, wanted in zip(("fragility", "coverage", "probe"), on):
            if wanted:
                self.ex.add_invariant(getattr(self, f"_{unit}")())
        self.ex.add_invariant(self._emergency())

    # -- the theories
    def _theory(self, name, fam, driver, theta, conf, bias, sd, effect):
        study, v = self, self.v

        class Theory(pc.Mechanism):
            def transform(self):
                c, x, i = v["colonized"].value, v[driver].value, v["intervention_code"].value
                eps = study.ex.rng.normal(0, sd)
                m = 1.0 - effect if round(i) == fam + 1 else 1.0
                w = np.clip(c + theta * x * bias * m + eps, 0.0, 100.0)
                wo = np.clip(c + theta * x * bias + eps, 0.0, 100.0)
                for var, val, cf in (("predicted_colonized", w, conf), ("intervention_code", float(fam + 1), conf),
                                     ("baseline_colonized", wo, conf * 0.9)):
                    v[var].add_hypothesis(pc.VariableRecord(value=val, confidence=cf, source=self.key()))

        reads = [v["colonized"], v["intervention_code"]] + ([] if driver == "colonized" else [v[driver]])
        return Theory(reads=reads, writes=[v["predicted_colonized"], v["intervention_code"], v["baseline_colonized"]])

    # -- helpers
    def _recent_error(self):
        return float(np.mean([c.value for _, c, _, _ in self.v["error_colonized"].recent(10) if c is not None]))

    def _set_family(self, f, on):
        for m in self.family[f]:
            m.enable() if on else m.disable()

    def _invariant(self, name, phase, condition, handler):
        def on_violation(violation, snapshot):
            self.events[name] += 1
            handler(snapshot.step)

        return pc.SystemInvariant(name=name, condition=lambda snap: condition(snap.step), on_violation=on_violation,
                                  phase=phase, message="")

    # -- governance units (the bookkeeping runs inside the condition, as in the original)
    def _fragility(self):
        u = {"on": False, "start": None, "pre": None, "wc": self.v["intervention_code"].policy}
        ic = self.v["intervention_code"]

        def condition(t):
            if u["on"] and u["start"] and t - u["start"] >= 10:
                if not (u["pre"] and self._recent_error() < u["pre"]):
                    ic.policy = u["wc"]
                u["on"] = False
            if u["on"]:
                return True
            f, e = self.v["policy_fragility"].value, self.v["error_colonized"].value
            return f is None or e is None or not (f > 0.6 and e > 1.0)

        def start(t):
            u.update(on=True, start=t, pre=self._recent_error())
            ic.policy = pc.HighestConfidencePolicy()

        return self._invariant("fragility", pc.InvariantPhase.RUNTIME, condition, start)

    def _coverage(self):
        u = {"on": False, "start": None, "pre": None, "counts": [0, 0, 0], "family": None}

        def condition(t):
            if u["on"] and u["start"] is not None and t - u["start"] >= 10:
                if not (u["pre"] and self._recent_error() < u["pre"]):
                    self._set_family(u["family"], True)
                u["on"] = False
            if u["on"]:
                return True
            for f in range(3):
                cov = self.v[f"coverage_{f}"].value
                if cov is None:
                    continue
                if cov < 0.85:
                    u["counts"][f] += 1
                    if u["counts"][f] >= 3:
                        u["family"] = f
                        return False
                else:
                    u["counts"][f] = 0
            return True

        def start(t):
            u.update(on=True, start=t, pre=self._recent_error())
            self._set_family(u["family"], False)

        return self._invariant("coverage", pc.InvariantPhase.POST, condition, start)

    def _probe(self):
        u = {"on": False, "start": None, "pre": None, "next": 25, "k": 0}

        def condition(t):
            if u["on"] and u["start"] and t - u["start"] >= 20:
                for f in range(3):
                    self._set_family(f, True)
                u.update(on=False, next=t + 25)
            return not (not u["on"] and t >= u["next"])

        def start(t):
            probed, u["k"] = u["k"] % 3, u["k"] + 1
            u.update(on=True, start=t, pre=self._recent_error())
            for f in range(3):
                self._set_family(f, f == probed)

        return self._invariant("probe", pc.InvariantPhase.PRE, condition, start)

    def _emergency(self):
        def restore(t):
            for f in range(3):
                self._set_family(f, True)

        return self._invariant("emergency", pc.InvariantPhase.POST,
                               lambda t: any(m.is_enabled() for m in self.theories), restore)

    # -- hooks
    def _world(self, ex, t):
        if t == 0:
            return
        v, r = self.v, self.world_rng
        a = max(0.0, v["antibiotic_usage"].value + r.normal(0, 1.1))
        e = max(0.0, v["environmental_load"].value + r.normal(0, 2.0))
        regime = 0 if t <= 60 else 1 if t <= 110 else 2
        c = v["colonized"].value
        force = (0.05 * a, 0.08 * e, 0.03 * c)[regime]
        c = np.clip(c + force - 0.02 * c + r.normal(0, 0.25), 0.0, 100.0)
        for name, x in (("antibiotic_usage", a), ("environmental_load", e), ("regime", regime), ("colonized", c)):
            v[name].set(pc.VariableRecord(value=x, confidence=0.99))

    def _signals(self, ex, t):
        v = self.v
        c = v["colonized"].value
        if t > 0:
            for src, dst in (("predicted_colonized", "error_colonized"), ("baseline_colonized",
                                                                         "error_baseline_colonized")):
                _, previous, _, _ = v[src].get(start=-2, size=1)[0]
                v[dst].set(pc.VariableRecord(value=float(abs(previous.value - c)), confidence=0.99))
            hyps, _, _, _ = v["predicted_colonized"].get(start=-2, size=1)[0]
            by_source = {h.record.source: h.record.value for h in hyps if h.record is not None}
            for f in range(3):
                raw = np.mean([np.exp(-abs(by_source[m.key()] - c) / 5.0) if m.key() in by_source else 0.0
                               for m in self.family[f]])
                s = self.smoothed[f]
                self.smoothed[f] = raw if s is None else 0.2 * raw + (1 - 0.2) * s
                v[f"coverage_{f}"].set(pc.VariableRecord(value=self.smoothed[f], confidence=0.99))
        codes = [h.record.value for h in v["intervention_code"].memory.latest()[0] if h.record is not None]
        self.frag = (self.frag + [(max(codes) - min(codes)) / 3.0 if len(codes) >= 2 else 0.0])[-5:]
        v["policy_fragility"].set(pc.VariableRecord(value=np.mean(self.frag), confidence=0.99))

    def run(self, steps: int = 160) -> dict:
        """Run ``steps`` steps; the run's mean and population std of the prediction
        error, its final diff (cumulative regret up to step ``steps - 2``), and how
        many experiments each unit started."""
        self.ex.run(steps=steps, pre_step=self._world, post_step=self._signals)
        stats = self.v["error_colonized"].stats.result()
        e = [c.value for _, c, _, _ in self.v["error_colonized"].memory.records()]
        eb = [c.value for _, c, _, _ in self.v["error_baseline_colonized"].memory.records()]
        cumulative = np.cumsum(np.asarray(eb) - np.asarray(e))
        return dict(mean_error=stats.mean, std_error=stats.std, final_diff=cumulative[steps - 3], events=self.events)
