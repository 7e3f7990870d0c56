"""The fleet's atomic Redis steps: one Lua file each in contract/lua/, its KEYS and ARGV documented there."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_lua(name: str) -> str:
    return resources.files("contract").joinpath(f"lua/{name}.lua").read_text()
