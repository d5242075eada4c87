"""Labels from a CSV file, the layout Kaggle and fastai use for multilabel data.

One row per image: a column with the image's path relative to the data folder, and either

- a labels column, the image's labels separated by a separator (``"cat dog"``), or
- one 0/1 column per class (``image,cat,dog`` / ``a.png,1,0``),

and optionally a split column (``train``/``val``/``test``, or a boolean such as fastai's ``is_valid``: true marks
a validation row). Class names come from the CSV: the sorted
unique labels, or the class columns in their order. Rows are numbered as in a text editor (the header is
line 1), so the errors point at lines of the file.
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from pathlib import Path

from lit_finetune.tasks.classification import task_type
from lit_finetune.tasks.targets import ClassificationTargets

SPLITS = ("train", "val", "test")
MAX_LISTED = 20


@dataclass
class CsvRow:
    """One image of the CSV: its line in the file, its path, the indices of its classes and its split."""

    line: int
    path: str
    classes: list[int]
    split: str | None


def listing(items: list, limit: int = MAX_LISTED) -> str:
    """Up to ``limit`` items, one a line, and how many more there are."""
    shown = "\n".join(f"  {item}" for item in items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line, row)`` pairs of a CSV file; blank lines are skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"Labels CSV '{path}' does not exist. Check `data.labels_csv`.")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}) for row in reader]
    if not header:
        raise ValueError(f"Labels CSV '{path}' is empty: it needs a header line naming its columns.")
    if not rows:
        raise ValueError(f"Labels CSV '{path}' has a header but no rows.")
    return header, rows


def check_columns(path: Path, header: list[str], wanted: dict[str, str]) -> None:
    """Raise when a column named by an option (``{option: column}``) is not in the header."""
    for option, column in wanted.items():
        if column not in header:
            close = difflib.get_close_matches(column, header, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"Column '{column}' (`data.{option}`) is not in '{path}', whose columns are {header}.{hint}")


def split_labels(value: str, separator: str) -> list[str]:
    """The labels of one cell (duplicates and empty parts dropped, order kept)."""
    parts = value.split(separator) if separator.strip() else value.split()
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def parse_label_column(rows, label_column: str, separator: str) -> tuple[list[str], list[list[int]]]:
    """Class names (sorted unique labels) and each row's class indices, from a labels column."""
    labels = [split_labels(row[label_column], separator) for _, row in rows]
    names = sorted({name for row in labels for name in row})
    index = {name: i for i, name in enumerate(names)}
    return names, [sorted(index[name] for name in row) for row in labels]


def parse_class_columns(path: Path, rows, columns: list[str]) -> list[list[int]]:
    """Each row's class indices, from one 0/1 column per class."""
    classes, bad = [], []
    for line, row in rows:
        values = [row[c] for c in columns]
        bad += [f"line {line}, column '{c}': {v!r}" for c, v in zip(columns, values, strict=False) if v not in ("0", "1")]
        classes.append([i for i, v in enumerate(values) if v == "1"])
    if bad:
        raise ValueError(f"Class columns of '{path}' must hold 0 or 1; these cells do not:\n{listing(bad)}")
    return classes


VALID_VALUES = ("true", "1", "yes")
TRAIN_VALUES = ("false", "0", "no")
"""A boolean split column (fastai's ``is_valid``): these values mark validation rows, and those training rows."""


def parse_splits(path: Path, rows, split_column: str | None) -> list[str | None]:
    """Each row's split, or None for every row without a split column.

    The column says ``train``/``val``/``test``, or it is a boolean such as fastai's ``is_valid``
    (``True``/``False``, ``1``/``0``, ``yes``/``no``, any case): true marks a validation row, false a training row.
    """
    if split_column is None:
        return [None] * len(rows)
    values = [row[split_column].lower() for _, row in rows]
    if values and all(v in VALID_VALUES + TRAIN_VALUES for v in values):
        return ["val" if v in VALID_VALUES else "train" for v in values]
    bad = [f"line {line}: {row[split_column]!r}" for (line, row), s in zip(rows, values, strict=False) if s not in SPLITS]
    if bad:
        raise ValueError(
            f"Column '{split_column}' of '{path}' must say train, val or test, or be a boolean (true/false, 1/0: true marks "
            f"a validation row, as fastai's is_valid); these rows do not:\n{listing(bad)}"
        )
    return values


def check_label_counts(path: Path, parsed: list[CsvRow], task: type[ClassificationTargets]) -> None:
    """A task of one label a sample (multiclass, binary) needs exactly one label a row."""
    if not task.single_label:
        return
    bad = [f"line {r.line} ({r.path}): {len(r.classes)} labels" for r in parsed if len(r.classes) != 1]
    if bad:
        raise ValueError(
            f"task '{task.name}' needs exactly one label per row, but these rows of '{path}' have none or several:\n{listing(bad)}\n"
            "Set `model.task: multilabel` for images with any number of labels (no label: all negative)."
        )


def check_images(root: Path, path: Path, parsed: list[CsvRow], image_column: str) -> None:
    """Raise on rows without an image path, and list every image file that does not exist."""
    empty = [f"line {r.line}" for r in parsed if not r.path]
    if empty:
        raise ValueError(
            f"Rows of '{path}' with an empty '{image_column}' cell:\n{listing(empty)}\nGive each row an image path relative to `data.root`."
        )
    missing = [f"line {r.line}: {r.path}" for r in parsed if not (root / r.path).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(parsed)} images named in '{path}' do not exist under '{root}':\n{listing(missing)}\n"
            f"The '{image_column}' column holds paths relative to `data.root`, with their extension."
        )


def read_labels_csv(
    path: str | Path,
    root: str | Path,
    image_column: str = "image",
    label_column: str | None = "labels",
    label_separator: str = " ",
    class_columns: list[str] | None = None,
    split_column: str | None = None,
    task: str | type[ClassificationTargets] = "multiclass",
) -> tuple[list[str], list[CsvRow]]:
    """Read and check a labels CSV; return ``(class_names, rows)``.

    Args:
        path: the CSV file.
        root: the folder the image paths are relative to.
        image_column: the column of image paths.
        label_column: the column of labels separated by ``label_separator``; None: one 0/1 column per class.
        label_separator: separator of the labels in ``label_column``.
        class_columns: the 0/1 class columns when ``label_column`` is None; None: every column but the
            image and split columns.
        split_column: the column of splits (train/val/test, or a boolean: true/1/yes marks a validation row, as
            fastai's ``is_valid``); None: no split in the file.
        task: the task (its name or class): ``multiclass`` and ``binary`` need one label a row (a binary CSV with one
            class column: its 0/1 value); ``multilabel`` allows any number, none meaning all negative.

    Raises:
        FileNotFoundError: the CSV or any image it names does not exist (all missing images are listed).
        ValueError: an unknown column, an empty image cell, a class cell other than 0/1, a bad split
            value, a row with no or several labels where one is needed, too few classes for the task.

    Example::

        names, rows = read_labels_csv("data/digit_pairs/labels.csv", "data/digit_pairs", split_column="split", task="multilabel")
    """
    path, root = Path(path), Path(root)
    header, rows = read_rows(path)
    wanted = {"image_column": image_column}
    wanted.update({"label_column": label_column} if label_column is not None else {})
    wanted.update({"split_column": split_column} if split_column is not None else {})
    check_columns(path, header, wanted)
    for column in class_columns or []:  # each named class column must exist (one option, several columns)
        check_columns(path, header, {"class_columns": column})
    if label_column is not None:
        names, classes = parse_label_column(rows, label_column, label_separator)
    else:
        names = list(class_columns) if class_columns else [c for c in header if c not in (image_column, split_column)]
        if not names:
            raise ValueError(
                f"'{path}' has no class columns besides '{image_column}': set `data.label_column` or add one 0/1 column per class."
            )
        classes = parse_class_columns(path, rows, names)
    splits = parse_splits(path, rows, split_column)
    parsed = [CsvRow(line, row[image_column], c, s) for (line, row), c, s in zip(rows, classes, splits, strict=False)]
    check_images(root, path, parsed, image_column)
    task = task_type(task) if isinstance(task, str) else task
    if not (task.one_class_column and label_column is None and len(names) == 1):
        check_label_counts(path, parsed, task)
        task.check_class_names(names, f"'{path}'")
    return names, parsed
