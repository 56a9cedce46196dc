"""A local simulator of the OpenAI Realtime API (GA) over real WebRTC (aiortc).

    sim = await start_simulator("127.0.0.1", 0)      # in a running loop
    thread = SimulatorThread(); url = thread.start()   # for sync callers
    python -m realtime_sim --host 127.0.0.1 --port 8100
"""

from .server import Simulator, SimulatorThread, start_simulator
from .state import DEFAULT_API_KEY, SimState

__all__ = ["DEFAULT_API_KEY", "SimState", "Simulator", "SimulatorThread", "start_simulator"]
