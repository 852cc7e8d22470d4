"""One sample of everything: host-wide sensors plus one ServiceReading per service.

Never raises: each source is read inside its own guard, and a failure becomes a
"<source>: <reason>" entry in ``Snapshot.missing`` (or in the service's ``errors``).
PSI files the kernel does not provide (e.g. irq before 6.1) are None without a 'missing'
entry; ``autotune status`` reports those as capabilities instead.
Latency is left None here; it is attached by a separate hook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from autotune.config import Service
from autotune.detect import registry
from autotune.errors import MissingFile, TargetGone
from autotune.host import PSI_RESOURCES, Host
from autotune.sensors.cgroup import read_cgroup
from autotune.sensors.loadavg import read_loadavg
from autotune.sensors.meminfo import read_meminfo
from autotune.sensors.process import read_processes
from autotune.sensors.psi import read_psi_file
from autotune.sensors.service import resolve_service
from autotune.sensors.stat import read_stat
from autotune.sensors.vmstat import read_vmstat
from autotune.types import PsiReading, ServiceReading, Snapshot

log = logging.getLogger(__name__)
T = TypeVar("T")


def _guard(name: str, fn: Callable[[], T], missing: list[str]) -> T | None:
    try:
        return fn()
    except Exception as err:  # one bad source must not lose the whole sample
        log.debug("sensor %s failed: %s", name, err, exc_info=True)
        missing.append(f"{name}: {err}")
        return None


def read_service(host: Host, svc: Service) -> ServiceReading:
    """Resolve and read one service; problems end up in ``errors``, never raised."""
    errors: list[str] = []
    try:
        resolved = resolve_service(host, svc)
    except Exception as err:  # resolve_service should not raise; be safe anyway
        return ServiceReading(name=svc.name, errors=[f"resolve: {err}"])
    errors.extend(resolved.errors)
    cg = None
    if resolved.cgroup is not None:
        try:
            cg = read_cgroup(host, resolved.cgroup, errors=errors, paths=resolved.cgroups)
        except TargetGone as err:
            if not any(resolved.cgroup in e for e in errors):
                errors.append(str(err))
        except Exception as err:
            errors.append(f"cgroup {resolved.cgroup}: {err}")
    try:
        procs = read_processes(host, resolved.pids, errors=errors)
    except Exception as err:
        errors.append(f"processes: {err}")
        procs = []
    return ServiceReading(name=svc.name, cgroup=cg, cgroups=resolved.cgroups, processes=procs, errors=errors)


def _optional(fn: Callable[[Host], T], host: Host) -> T | None:
    """A declared sensor's reading; None, without a 'missing' entry, when its file is not on
    this kernel (as a PSI file the kernel lacks)."""
    try:
        return fn(host)
    except MissingFile:
        return None


def collect(host: Host, services: list[Service], now: float | None = None) -> Snapshot:
    """Sample the host once. ``now`` (unix seconds) defaults to time.time()."""
    ts = time.time() if now is None else now
    missing: list[str] = []
    psi: dict[str, PsiReading | None] = {}
    for res in PSI_RESOURCES:
        psi[res] = _guard(f"psi.{res}", lambda r=res: read_psi_file(host, f"/proc/pressure/{r}"), missing)
    vmstat = _guard("vmstat", lambda: read_vmstat(host), missing)
    stat = _guard("stat", lambda: read_stat(host), missing)
    meminfo = _guard("meminfo", lambda: read_meminfo(host), missing)
    loadavg = _guard("loadavg", lambda: read_loadavg(host), missing)
    declared = {}
    for spec, fn in registry.sensors().items():  # each one a module and its registry entries
        got = _guard(spec.rpartition(":")[0].rpartition(".")[2], lambda f=fn: _optional(f, host), missing)
        if got is not None:
            declared[spec] = got
    readings = {svc.name: read_service(host, svc) for svc in services}
    return Snapshot(
        ts=ts,
        psi=psi,
        vmstat=vmstat or {},
        stat=stat,
        meminfo_bytes=meminfo or {},
        loadavg=loadavg,
        readings=declared,
        services=readings,
        missing=missing,
    )
