"""training package."""

from vilbert.threads import fair_share

fair_share()  # before anything imports torch: OpenMP threads wait without spinning (vilbert/threads.py)
