"""`python -m bootstrap` (what `make serve` runs): build the demo model if it is missing, then serve it.

Modules: `layout` (where each build output goes; the gateway's default paths, standard library
only), `pipeline` (the build steps, each skipped once its output exists, and the serve step: Triton +
the gateway, or the gateway alone with ``--backend local``).  Importing the package builds nothing.
"""

from vilbert.threads import fair_share

fair_share()  # before anything imports torch: OpenMP threads wait without spinning (vilbert/threads.py)
