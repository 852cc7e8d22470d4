"""`autotune demo`: the loop acting on this host, on cgroups it creates and removes again.

``session`` runs it (setup, load, teardown, summary), ``feed`` prints the audit trail as it is
written, ``hostvalues`` reads the host-wide values that must be the same afterwards.
"""
