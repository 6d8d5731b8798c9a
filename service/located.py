"""An input error that knows where it is: a JSON path (`data.x[3]`) or a place in an upload (`file: line 7`)."""

from __future__ import annotations


class LocatedError(ValueError):
    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(f"{loc}: {msg}")
        self.loc = loc
        self.msg = msg
