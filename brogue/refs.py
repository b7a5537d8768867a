"""``name@version``: the immutable references of the adapter store and the model store.

A reference names one entry of a store, and an entry never changes once written, so every server
that reads the same store agrees on what a reference means. :class:`Ref` holds the grammar;
:class:`brogue.adapters.AdapterRef` and :class:`brogue.models.ModelRef` are its two kinds, which
differ only in the word their errors use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Ref:
    """``name@version``: ``name`` matches ``[a-z0-9][a-z0-9._-]{0,63}`` and ``version`` matches
    ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``; otherwise the constructor raises ``ValueError``."""

    KIND: ClassVar[str] = "entry"

    name: str
    version: str

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(
                f"invalid {self.KIND} name {self.name!r}: expected 1 to 64 characters from [a-z0-9._-], "
                "the first from [a-z0-9]"
            )
        if not VERSION_RE.fullmatch(self.version):
            raise ValueError(
                f"invalid {self.KIND} version {self.version!r}: expected 1 to 64 characters from "
                "[A-Za-z0-9._-], the first from [A-Za-z0-9]"
            )

    @classmethod
    def parse(cls, text: str):
        """Parse ``"name@version"``; raise ``ValueError`` saying what is wrong with ``text``."""
        name, at, version = text.partition("@")
        if not at:
            raise ValueError(f"invalid {cls.KIND} reference {text!r}: expected 'name@version'")
        try:
            return cls(name, version)
        except ValueError as e:
            raise ValueError(f"invalid {cls.KIND} reference {text!r}: {e}") from None

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"
