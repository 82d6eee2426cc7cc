"""Structured JSON logs for every process (one event name per line, contract spirit).

``REGISTRY_DEBUG=true`` lowers the level to DEBUG; nothing else changes.
"""

from __future__ import annotations

import logging
import sys

import structlog

# Loggers cached on first use: cheaper per call in the services. A test process turns it off
# (root conftest): a cached logger escapes ``structlog.testing.capture_logs`` for good, so one
# test that runs a ``main()`` in-process would blind every later test that captures logs.
CACHE_LOGGERS = True


def configure_logging(debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries dump whole HTTP bodies at DEBUG: too much even for REGISTRY_DEBUG.
    for noisy in ("kubernetes_asyncio", "kubernetes", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))
