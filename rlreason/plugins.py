"""User code named in a recipe as `package.module:attribute` (a reward, a loss): the one way
rlreason imports it. Modules are found on sys.path and, last, in the working directory,
because console scripts such as `rlreason` do not put it on sys.path and `./my_rewards.py`
should just work. Callers word their own errors; this module imports nothing of rlreason.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["import_user_module", "resolve_attribute"]


def import_user_module(name: str):
    """Import module `name` from sys.path, then the working directory."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(name)


def resolve_attribute(obj: Any, dotted: str) -> Any:
    """`obj.a.b` for dotted 'a.b'; AttributeError when a part is missing."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
