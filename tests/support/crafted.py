"""A crafted pickle for the run-directory tests: unpickling it runs code (it creates a marker file)."""

from __future__ import annotations

import pathlib
import pickle


class _Touch:
    """Unpickling this runs code: it creates `marker` (a stand-in for whatever a crafted pickle would do)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def crafted(marker: pathlib.Path) -> bytes:
    """Pickle bytes whose unpickling creates ``marker``."""
    return pickle.dumps(_Touch(marker))
