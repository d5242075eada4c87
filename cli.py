"""Run the lit-finetune command line from a checkout: ``python cli.py fit --config configs/quickstart.yaml``."""

from lit_finetune.cli import main

if __name__ == "__main__":
    main()
