"""Shared library of the RegistryTask platform.

One definition of every Redis key, document shape, event type and custom-resource model,
imported by the operator, the RPC shim and the runners alike.
"""

__version__ = "0.1.0"
