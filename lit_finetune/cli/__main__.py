"""``python -m lit_finetune.cli``: the same command line as ``lit-finetune``."""

from lit_finetune.cli.app import main

if __name__ == "__main__":
    main()
