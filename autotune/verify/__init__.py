"""The verify stage: did a change help? Keep it, or roll it back.

- ``objectives``: what is measured: named series of the metric vocabulary (detect/metrics.py).
- ``stats``: the statistics (Mann-Whitney U + bootstrap CI of the median difference) giving a
  ``VerifyResult`` (autotune/types.py, so the journal can load it without numpy/scipy).
- ``stage``: ``Verifier``, the loop stage that judges every change whose after-window is due.
- ``rollback``: the one routine that undoes journal entries (verify stage, ``Agent.stop``,
  ``autotune rollback``).
"""
