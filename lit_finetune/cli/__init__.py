"""The ``lit-finetune`` command line (``app.py``: LightningCLI with the project's defaults, the ``export``,
``check-data`` and ``optimize`` subcommands, short user errors), the options it links between data and model
(``option_links.py``), where runs write (``runs.py``), the default TensorBoard logger (``loggers.py``) and the
filters of foreign warnings (``noise.py``)."""

from lit_finetune.cli.app import FinetuneCLI, build_cli, find_user_error, main, names_class_path
from lit_finetune.cli.option_links import config_files

__all__ = ["FinetuneCLI", "build_cli", "config_files", "find_user_error", "main", "names_class_path"]
