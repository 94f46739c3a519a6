"""`dynafuse serve`: an HTTP API and a web page that score clips with trained runs kept warm (FastAPI + uvicorn).

Needs the `serve` extra (`pip install "dynafuse[serve]"`: FastAPI, uvicorn, python-multipart) and the media stack.
"""

from .app import create_app, run_server
from .service import ServeError, Service, parse_runs

__all__ = ["ServeError", "Service", "create_app", "parse_runs", "run_server"]
