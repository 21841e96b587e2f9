"""Command line: ``python cli.py fit|validate|test|predict --config configs/quickstart.yaml``."""

from tod_lightning.cli import main

if __name__ == "__main__":
    main()
