"""The one logger helper for code that runs inside Serve replicas.

Ray Serve writes a replica's log file (``logs/serve/replica_<app>_<deployment>_<id>.log``) from
the handlers it puts on the ``"ray.serve"`` logger, and turns that logger's propagation off; a
plain ``logging.getLogger(__name__)`` record would miss the replica file and land in the worker's
stderr instead. A child of ``"ray.serve"`` reaches the same handlers (and the level set by the
app's ``logging_config``) while naming the module that logged.
"""

from __future__ import annotations

import logging

SERVE_LOGGER = "ray.serve"  # ray.serve._private.constants.SERVE_LOGGER_NAME, without importing Ray


def serve_logger(module: str) -> logging.Logger:
    """The logger for ``module`` (pass ``__name__``): ``ray.serve.<module>``."""
    return logging.getLogger(f"{SERVE_LOGGER}.{module}")
