"""PSI-gated admission control for an OpenAI-compatible inference server.

``Gate`` (core.py) is the library (``async with gate.admit(): ...``), ``proxy.py`` the HTTP
reverse proxy around it, ``limiter.py`` the pure control laws, ``pressure.py`` the PSI input.
The proxy (Starlette) is imported only where it is served.
"""

from autotune.gate.core import Gate, GateRejected, GateSettings, GateStatus

__all__ = ["Gate", "GateRejected", "GateSettings", "GateStatus"]
