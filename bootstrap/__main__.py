"""`python -m bootstrap`: what `make serve` runs (see `bootstrap.pipeline`)."""

from bootstrap.pipeline import main
from vilbert.cli import run

if __name__ == "__main__":
    run(main)
