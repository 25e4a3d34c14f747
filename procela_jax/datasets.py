"""Data sets shipped with procela_jax (files in ``procela_jax/data/``, sources in
its ``README.md``).

>>> import procela_jax as pj
>>> flu = pj.datasets.boarding_school()
>>> flu.population, flu.initial_infected, flu.in_bed[:4].tolist()
(763, 1, [3, 8, 26, 76])
"""

from __future__ import annotations

import dataclasses
import importlib.resources

import numpy as np

__all__ = ["Outbreak", "boarding_school"]


@dataclasses.dataclass(frozen=True)
class Outbreak:
    """Daily counts of an outbreak in a closed population.

    Attributes:
        name: a short description.
        date: ``(days,)`` calendar dates (``numpy.datetime64``).
        day: ``(days,)`` day numbers, 1 on the first reported day.
        in_bed: ``(days,)`` people confined to bed that day (the infectious).
        convalescent: ``(days,)`` people recovering but not yet back.
        population: size of the closed population.
        initial_infected: infectious people when the outbreak began (day 0).
        source: where the numbers come from.
    """

    name: str
    date: np.ndarray
    day: np.ndarray
    in_bed: np.ndarray
    convalescent: np.ndarray
    population: int
    initial_infected: int
    source: str


def boarding_school() -> Outbreak:
    """The 1978 influenza outbreak in an English boarding school.

    763 boys, one ill at the start; ``in_bed`` counts the boys confined to bed
    on each of 14 days, 22 January to 4 February 1978 (512 fell ill in all).
    Public data: Anonymous (1978), "Influenza in a boarding school", *British
    Medical Journal* 1(6112): 587; the classic test case for fitting an SIR model.

    >>> import procela_jax as pj
    >>> flu = pj.datasets.boarding_school()
    >>> flu.day.tolist() == list(range(1, 15)), int(flu.in_bed.max()), str(flu.date[0])
    (True, 298, '1978-01-22')
    """
    path = importlib.resources.files("procela_jax") / "data" / "influenza_england_1978_school.csv"
    table = np.genfromtxt(str(path), delimiter=",", names=True, dtype=None, encoding="utf-8")
    columns = {
        "date": np.asarray(table["date"], "datetime64[D]"),
        "day": np.arange(1, len(table) + 1),
        "in_bed": np.asarray(table["in_bed"], np.int64),
        "convalescent": np.asarray(table["convalescent"], np.int64),
    }
    for a in columns.values():
        a.flags.writeable = False
    return Outbreak(
        name="influenza, boarding school in the north of England, 1978",
        **columns,
        population=763,
        initial_infected=1,
        source='Anonymous (1978), "Influenza in a boarding school", British Medical Journal 1(6112): 587',
    )
