"""procela_jax: a differentiable, jit-compiled engine for Procela-style simulations.

Variables keep a memory of competing hypotheses, mechanisms propose values with
confidences, policies resolve the conflicts, invariants govern the world, and
the :class:`Executive` runs it all as pure JAX functions of an immutable
:class:`State`.

Importing the package turns on JAX's persistent compilation cache in
``$XDG_CACHE_HOME/procela_jax`` (``PROCELA_JAX_CACHE=0`` turns it off; see
``procela_jax._cache``).
"""

from . import _cache

_cache.setup()


from ._calibrate import (
    CalibrationHistory as CalibrationHistory,
    calibrate as calibrate,
    mse_loss as mse_loss,
)
from ._checkpoint import load_checkpoint as load_checkpoint, save_checkpoint as save_checkpoint
from ._distributed import scenario_mesh as scenario_mesh
from ._domain import (
    BooleanDomain as BooleanDomain,
    CategoricalDomain as CategoricalDomain,
    CompositeDomain as CompositeDomain,
    Domain as Domain,
    RangeDomain as RangeDomain,
    RealDomain as RealDomain,
    StatisticalDomain as StatisticalDomain,
)
from ._errors import (
    CheckpointError as CheckpointError,
    EventHandlerError as EventHandlerError,
    InvalidProposalError as InvalidProposalError,
    InvariantViolation as InvariantViolation,
    InvariantViolationFatal as InvariantViolationFatal,
    ModelError as ModelError,
    NonFiniteResolutionError as NonFiniteResolutionError,
)
from ._executive import Executive as Executive
from ._infer import ConvergenceWarning as ConvergenceWarning, Posterior as Posterior, infer as infer
from ._invariant import (
    InvariantPhase as InvariantPhase,
    InvariantSeverity as InvariantSeverity,
    InvariantSoftness as InvariantSoftness,
    SystemInvariant as SystemInvariant,
)
from ._mechanism import Mechanism as Mechanism
from ._paths import Parameter as Parameter, parameter as parameter
from ._plan import TracePlan as TracePlan, choose_plan as choose_plan
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
from ._process import Process as Process
from ._record import VariableRecord as VariableRecord
from ._reasoning import (
    AnomalyDiagnoser as AnomalyDiagnoser,
    AnomalyResult as AnomalyResult,
    Diagnosis as Diagnosis,
    EWMADetector as EWMADetector,
    EWMAPredictor as EWMAPredictor,
    LastPredictor as LastPredictor,
    MeanPredictor as MeanPredictor,
    PredictionResult as PredictionResult,
    StatisticalDiagnoser as StatisticalDiagnoser,
    TREND_DOWN as TREND_DOWN,
    TREND_STABLE as TREND_STABLE,
    TREND_UP as TREND_UP,
    TrendDiagnoser as TrendDiagnoser,
    TrendOperator as TrendOperator,
    TrendPredictor as TrendPredictor,
    TrendResult as TrendResult,
    ZScoreDetector as ZScoreDetector,
    direction_name as direction_name,
)
from ._soft_policy import (
    SoftHighestConfidencePolicy as SoftHighestConfidencePolicy,
    SoftMajorityVotingPolicy as SoftMajorityVotingPolicy,
    SoftMedianPolicy as SoftMedianPolicy,
)
from ._recovery import FailureLog as FailureLog, Recovery as Recovery
from ._save import Save as Save, Trajectory as Trajectory
from ._signals import (
    confidence as confidence,
    conflict as conflict,
    coverage as coverage,
    entropy as entropy,
    ewma_update as ewma_update,
    fragility as fragility,
    hypotheses as hypotheses,
    smoothed_coverage as smoothed_coverage,
)
from ._simulation import Checkpoint as Checkpoint, Simulation as Simulation
from ._state import State as State
from ._statistics import Stats as Stats
from ._sweep import SweepInterrupted as SweepInterrupted, SweepResult as SweepResult, sweep as sweep
from ._sweep_inputs import SweepInputs as SweepInputs, grid as grid
from ._timer import Timer as Timer
from ._variable import Variable as Variable
from ._view import View as View
from . import datasets as datasets, demos as demos, likelihood as likelihood, plot as plot

__version__ = "0.1.0"
