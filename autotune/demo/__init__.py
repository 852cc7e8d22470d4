"""`autotune demo`: the loop acting on this host, on cgroups it creates and removes again.

``session`` runs it (setup, load, teardown, summary), ``feed`` prints the audit trail as it is
written; the host-wide values that must read the same afterwards are
``autotune/workload/hostvalues.py`` (shared with the benchmarks).
"""
