"""Options that the data module and the model both need: declared once, filled in on the other side by the CLI.

Each :class:`OptionLink` is one ``link_arguments`` of ``FinetuneCLI``: the model's ``backbone``, ``weights`` and
``task`` go to the data module when the config is parsed; what the data module reads from the files (classes,
``ignore_index``, palette, normalization statistics, counts) goes to the model once the data module exists. The
filled-in side cannot be set: :func:`refuse_linked_options` stops a config that sets it (jsonargparse would
drop the value without a word) with exit status 2 and the option to set instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser


@dataclass(frozen=True)
class OptionLink:
    """An option that the data module and the model both need, declared on one side and filled in on the other.

    Args:
        source: where it is declared: ``model.<option>`` (given to the data module when the config is parsed) or
            ``data.<attribute>`` (given to the model once the data module exists: what it read from the files).
        target: the option it fills in (``data.<option>`` or ``model.<option>``); setting it is an error.
        compute: the value from the data module (instead of its attribute ``source``).
        settable: whether ``source`` is an option a config sets (else the data module computes it).
    """

    source: str
    target: str
    compute: Callable[[Any], Any] | None = None
    settable: bool = True

    def add_to(self, parser: LightningArgumentParser, model: str, data: str) -> None:
        """``parser.link_arguments`` with the ``init_args`` prefixes of subclass mode (``model``, ``data``)."""
        prefix = {"model": model, "data": data}
        side, _, name = self.target.partition(".")
        target = prefix[side] + name
        if self.source.startswith("model."):
            parser.link_arguments(prefix["model"] + self.source.partition(".")[2], target)
        elif self.compute is not None:
            parser.link_arguments("data", target, compute_fn=self.compute, apply_on="instantiate")
        else:
            parser.link_arguments(self.source, target, apply_on="instantiate")


def _statistic(name: str) -> Callable[[Any], Any]:
    return lambda data: tuple(getattr(data.preprocessing, name))


def _palette(data: Any) -> list[list[int]] | None:
    palette = getattr(data, "palette", None)  # lists: equal to the data module's stored hyperparameter
    return [list(color) for color in palette] if palette is not None else None


OPTION_LINKS = (
    # The data module picks default transforms from the model's weights, and reads targets for the model's task ...
    OptionLink("model.backbone", "data.backbone"),
    OptionLink("model.weights", "data.weights"),
    OptionLink("model.task", "data.task"),
    # ... and the model learns its classes from the data; pictures are de-normalized with the data's statistics.
    OptionLink("data.num_classes", "model.num_classes"),
    OptionLink("data.class_names", "model.class_names"),
    OptionLink("data.class_counts", "model.class_counts", settable=False),
    OptionLink("data.num_train_samples", "model.num_train_samples", settable=False),
    OptionLink("data.mean", "model.image_mean", _statistic("mean")),
    OptionLink("data.std", "model.image_std", _statistic("std")),
)
"""The links of every model/data pair."""
SEGMENTATION_LINKS = (
    # Only in subclass mode: a class without the option (the classifier) is skipped by jsonargparse.
    OptionLink("data.ignore_index", "model.ignore_index", lambda data: getattr(data, "ignore_index", None)),
    OptionLink("data.palette", "model.palette", _palette),
)
"""Links of options that only segmentation classes have."""


def option_links(subclass_mode: bool) -> tuple[OptionLink, ...]:
    """The links the command line sets up: all of them in subclass mode, else those the classifier pair has."""
    return OPTION_LINKS + SEGMENTATION_LINKS if subclass_mode else OPTION_LINKS


def user_set_options(argv: list[str]) -> dict[str, str]:
    """``{"data.task": where}`` for every ``model``/``data`` option set on the command line or in a ``--config`` file
    (``init_args`` levels left out)."""
    found: dict[str, str] = {}
    for arg in argv:
        match = re.match(r"--((?:model|data)\.[\w.]+)", arg)
        if match:
            found[match.group(1).replace("init_args.", "")] = "the command line"

    for path in config_files(argv):
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # the parser reports the file itself
        for section in ("model", "data"):
            options = config.get(section) if isinstance(config, dict) else None
            if isinstance(options, dict):
                options = options.get("init_args", options) if isinstance(options.get("init_args"), dict) else options
                found.update({f"{section}.{name}": path for name in options if name not in ("class_path", "init_args")})
    return found


def refuse_linked_options(parser: LightningArgumentParser, argv: list[str], links: Sequence[OptionLink]) -> None:
    """Exit 2 when the command line or a config sets an option that a link fills in (it would be dropped).

    Raises:
        SystemExit: through ``parser.error``.
    """
    given = user_set_options(argv)
    for link in links:
        if link.target in given:
            hint = f"set '{link.source}' instead" if link.settable else "the data module counts it"
            parser.error(
                f"'{link.target}' is filled in from '{link.source}' by the command line and cannot be set ({given[link.target]}): {hint}."
            )


def config_files(args: list[str]) -> list[str]:
    """Paths given with ``--config`` in a command line."""
    files = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files
