"""The search: a learned allocation search over (server quota, weight ratio) at the measured
load, CLITE-style (Gaussian processes, a safe set grown from allocations known to keep the SLO,
expected improvement). ``model`` is the pure part (trials in, a proposal out), ``gp`` the
Gaussian process it fits (numpy), ``state`` the agent's side: trials recorded in the state DB,
proposals turned into guarded changes. Configured in ``[search]``; ``autotune search`` shows it."""
