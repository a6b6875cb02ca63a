"""A loader that misbehaves on purpose, to test the harness."""

from __future__ import annotations

import os
import time

from workbench.formats._common import WeightLoadError


def load(path: str) -> object:
    with open(path) as f:
        kind = f.read()
    if kind == "bad":
        raise WeightLoadError("bad file")
    if kind == "hang":
        time.sleep(60)
    if kind == "hog":
        return bytearray(1024 * 1024 * 1024)
    if kind == "boom":
        raise KeyError("oops")
    if kind == "die":
        os._exit(3)
    return kind
