"""A built-in Kimi-like model host that plays a scripted coding task and injects known faults.

It speaks OpenAI chat completions (``/v1/chat/completions``) and Bedrock
Converse (``/model/{modelId}/converse-stream`` and ``/converse``, see
:mod:`.converse_face`). Start it inside a running loop with
:func:`start_simulator`, mount it with :func:`make_simulator_app`, or run
``python -m proxy_core.simulator``.
"""

from .config import FAULT_NAMES, SimulatorConfig, SimulatorConfigError
from .faults import LEAK_VARIANTS
from .host import RunningSimulator, make_simulator_app, start_simulator
from .stats import FaultRecord, SimulatorStats

__all__ = [
    "FAULT_NAMES",
    "LEAK_VARIANTS",
    "FaultRecord",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorConfigError",
    "SimulatorStats",
    "make_simulator_app",
    "start_simulator",
]
