"""``swarmguard serve``: one node as an HTTP service over the in-process (or Ray) detector.

``create_app(settings) -> FastAPI`` (:mod:`.app`, where routes are mounted),
``ServeNode`` (:mod:`.node`: windows, durable log, replay; ``accept_behaviors`` feeds
vectors), ``ServeSettings`` (:mod:`.settings`), ``run_server`` (:mod:`.run`: uvicorn,
SIGTERM drain). Importing this package imports FastAPI: the command line imports
it inside ``swarmguard serve`` only.
"""

from .app import create_app, register_router
from .node import BEHAVIORS_POPULATION, SPANS_POPULATION, IngestResult, ServeNode
from .records import BehaviorBatch, EvidenceBatch, LineError
from .settings import ServeSettings

__all__ = ["create_app", "register_router", "ServeNode", "ServeSettings", "IngestResult", "BehaviorBatch",
           "EvidenceBatch", "LineError", "BEHAVIORS_POPULATION", "SPANS_POPULATION"]
