"""The web console: what Flower is to Celery, served by the shim under ``/console``.

Layers: :mod:`.access` (who sees which companies), :mod:`.source` (reads: RegistryTasks,
CompanyQuotas and Events from the API, usage counters and task documents from Redis),
:mod:`.views` (pure: page models from those reads), :mod:`.routes` (HTML pages, the JSON API
behind them, the Server-Sent Events stream, cancel).
"""
