"""``python -m swarmguard ...``: the same command line as ``swarmguard ...``."""

from swarmguard.cli import app

if __name__ == "__main__":
    app(prog_name="swarmguard")
