"""Helpers for DoFns that hold elements across ``process`` calls and emit the rest in
``finish_bundle`` (decode's thread pool, score's inference thread)."""
from __future__ import annotations

from typing import Iterable

from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows


def in_global_window(outputs: Iterable):
    """``finish_bundle`` has no input element to take a window from: every output,
    tagged or not, is put in the global window (the pipeline is batch)."""
    for output in outputs:
        if isinstance(output, TaggedOutput):
            yield TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
        else:
            yield GlobalWindows.windowed_value(output)
