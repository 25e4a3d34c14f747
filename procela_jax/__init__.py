"""procela_jax: a differentiable, jit-compiled engine for Procela-style simulations.

Variables keep a memory of competing hypotheses, mechanisms propose values with
confidences, policies resolve the conflicts, invariants govern the world, and
the :class:`Executive` runs it all as pure JAX functions of an immutable
:class:`State`.
"""

from ._checkpoint import load_checkpoint as load_checkpoint, save_checkpoint as save_checkpoint
from ._domain import (
    BooleanDomain as BooleanDomain,
    CategoricalDomain as CategoricalDomain,
    CompositeDomain as CompositeDomain,
    Domain as Domain,
    RangeDomain as RangeDomain,
    RealDomain as RealDomain,
)
from ._errors import (
    CheckpointError as CheckpointError,
    EventHandlerError as EventHandlerError,
    InvalidProposalError as InvalidProposalError,
    InvariantViolation as InvariantViolation,
    InvariantViolationFatal as InvariantViolationFatal,
    ModelError as ModelError,
)
from ._executive import Executive as Executive
from ._invariant import (
    InvariantPhase as InvariantPhase,
    InvariantSeverity as InvariantSeverity,
    InvariantSoftness as InvariantSoftness,
    SystemInvariant as SystemInvariant,
)
from ._mechanism import Mechanism as Mechanism
from ._memory import (
    SOURCE_BLEND as SOURCE_BLEND,
    SOURCE_EXTERNAL as SOURCE_EXTERNAL,
    SOURCE_NONE as SOURCE_NONE,
    Memory as Memory,
)
from ._policy import (
    FunctionPolicy as FunctionPolicy,
    HighestConfidencePolicy as HighestConfidencePolicy,
    MajorityVotingPolicy as MajorityVotingPolicy,
    MeanPolicy as MeanPolicy,
    MedianPolicy as MedianPolicy,
    Policy as Policy,
    WeightedConfidencePolicy as WeightedConfidencePolicy,
    WeightedVotingPolicy as WeightedVotingPolicy,
)
from ._record import VariableRecord as VariableRecord
from ._recovery import FailureLog as FailureLog, Recovery as Recovery
from ._save import Save as Save, Trajectory as Trajectory
from ._simulation import Checkpoint as Checkpoint, Simulation as Simulation
from ._state import State as State
from ._statistics import Stats as Stats
from ._timer import Timer as Timer
from ._variable import Variable as Variable
from ._view import View as View
from . import demos as demos, plot as plot

__version__ = "0.1.0"
