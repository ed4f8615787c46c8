"""A faithful HTTP fake of the OpenAI, Anthropic and Groq admin usage/cost APIs.

Used by every test and by the docker-compose `demo` profile. Data is synthetic and
deterministic (`dataset`), costs follow the simulator's price card (`prices`), and
`server.SimulatorServer` serves it with a controllable clock and fault injection.
"""

from exporter.simulator.dataset import Dataset
from exporter.simulator.server import SimulatorServer, main

__all__ = ["Dataset", "SimulatorServer", "main"]
