"""``python -m data_engine.sources <name> --out DIR [--count N] [--seed S] [--input ...]``."""

from data_engine.sources.cli import main_argv

if __name__ == "__main__":
    main_argv()
