"""``cgroup.*`` knobs, one module per knob; the shared plumbing is in ``base``.

Target = cgroup path ("/autotune/llm"). The vocabulary (cores, weight 1..10000, bytes, cpu
lists) is mapped onto v2 or v1 files by ``autotune/cgroupfs.py``.
"""
