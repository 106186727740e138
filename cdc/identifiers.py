"""PostgreSQL identifiers as users write them in the config, and as SQL needs them quoted.

Users type table names the way they would in psql: ``customers``, ``crm.customers`` or
``workspace_1."person"``. Unquoted parts fold to lower case, quoted parts keep their case and may
contain anything (a doubled quote is a quote), exactly as PostgreSQL reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNQUOTED = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_MAX_IDENTIFIER_BYTES = 63


def quote_identifier(name: str) -> str:
    """Quote one identifier for SQL, whatever it contains."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True, order=True)
class TableName:
    """A schema-qualified table name, stored unquoted with its exact case."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> TableName:
        """Parse ``table``, ``schema.table`` or their quoted forms.

        Raises:
            ValueError: The text is not a valid (optionally schema-qualified) identifier; the message
                says what is wrong and where.
        """
        parts = _split_identifiers(text)
        if len(parts) == 1:
            return cls(default_schema, parts[0])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        raise ValueError(
            f"{text!r} has {len(parts)} dot-separated parts; write table or schema.table "
            '(quote a name that contains a dot: schema."my.table")'
        )

    @property
    def quoted(self) -> str:
        """The name as SQL needs it: ``"schema"."table"``."""
        return f"{quote_identifier(self.schema)}.{quote_identifier(self.name)}"

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def _split_identifiers(text: str) -> list[str]:
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i >= n:
            raise ValueError(f"{text!r}: expected a name at position {i + 1}")
        if text[i] == '"':
            i, part = _read_quoted(text, i)
        else:
            match = _UNQUOTED.match(text, i)
            if not match:
                raise ValueError(
                    f"{text!r}: unexpected {text[i]!r} at position {i + 1}; "
                    "quote names that are not plain lower-case identifiers"
                )
            part = match.group().lower()
            i = match.end()
        if len(part.encode()) > _MAX_IDENTIFIER_BYTES:
            raise ValueError(f"{text!r}: {part!r} is longer than PostgreSQL's 63-byte limit")
        parts.append(part)
        if i == n:
            return parts
        if text[i] != ".":
            raise ValueError(f"{text!r}: expected '.' at position {i + 1}, found {text[i]!r}")
        i += 1


def _read_quoted(text: str, start: int) -> tuple[int, str]:
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        if text[i] == '"':
            if i + 1 < len(text) and text[i + 1] == '"':
                chars.append('"')
                i += 2
                continue
            if not chars:
                raise ValueError(f"{text!r}: empty quoted name at position {start + 1}")
            return i + 1, "".join(chars)
        chars.append(text[i])
        i += 1
    raise ValueError(f"{text!r}: quote opened at position {start + 1} is never closed")
