"""Antimicrobial resistance in a hospital: competing causal theories under governance.

A hidden world drives colonisation ``C`` by a cause that changes twice (antibiotic
selection, then the environment, then patient contact). Eleven theories in three
families (contact, environmental, selection) forecast ``C`` and advocate an
intervention (isolation, cleaning, stewardship); confidence-weighted resolution
decides the forecast and the intervention. Four governance units watch the
forecasts and experiment with the model's structure while it runs: switch the
intervention policy when proposals are fragile, drop a family whose coverage
decays, probe each family alone, restore every family when none is left.

The study runs five governance settings (none, fragility, coverage, probe, all)
over many seeds. Here all of them are one jitted, vmapped computation: the
setting is data (which invariants are active), not structure.

>>> from procela_jax.demos import amr
>>> amr.SETTINGS
('none', 'fragility', 'coverage', 'probe', 'all')
>>> res = amr.run_protocol(seeds=range(2), steps=20, noise="jax")
>>> res.mean_error.shape  # (settings, seeds)
(5, 2)
"""

from ._figures import (
    figure_predictions as figure_predictions,
    figure_regret as figure_regret,
    figure_signals as figure_signals,
    figure_trust as figure_trust,
    save_figures as save_figures,
    trace as trace,
)
from ._governance import UNITS as UNITS, invariants as invariants
from ._model import (
    FAMILIES as FAMILIES,
    INTERVENTIONS as INTERVENTIONS,
    MECHANISMS as MECHANISMS,
    THEORIES as THEORIES,
    Theory as Theory,
    world_normals as world_normals,
)
from ._report import (
    PUBLISHED as PUBLISHED,
    main as main,
    print_table as print_table,
    reproduction_table as reproduction_table,
    summarise as summarise,
)
from ._protocol import (
    SETTINGS as SETTINGS,
    ProtocolResult as ProtocolResult,
    active as active,
    make_executive as make_executive,
    numpy_noise as numpy_noise,
    run_protocol as run_protocol,
)
