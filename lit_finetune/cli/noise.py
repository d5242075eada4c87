"""Messages from libraries we build on that tell a user of ``lit-finetune`` nothing, filtered one by one.

Each filter matches one message by its text, so every other warning and log line still shows. Noise that
this package causes itself is fixed at its cause instead (see ``export.py``).
"""

from __future__ import annotations

import logging
import warnings

ADVERT_PREFIX = "💡 Tip:"
"""Lightning's advertisement for its cloud logger, printed at every ``Trainer`` set-up."""

FOREIGN_WARNINGS = (
    # Lightning's own pytree helper calls an API that torch >= 2.10 deprecates; nothing a user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class DropAdvert(logging.Filter):
    """Drops the log records that start with :data:`ADVERT_PREFIX`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERT_PREFIX)


def quiet_foreign_noise() -> None:
    """Install the filters (idempotent); the command line calls it before building the Trainer."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropAdvert) for f in logger.filters):
            logger.addFilter(DropAdvert())
    for message in FOREIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
