"""`python -m tether` runs the same command as the `tether` console script."""

from tether.cli import entry

if __name__ == "__main__":
    raise SystemExit(entry())
