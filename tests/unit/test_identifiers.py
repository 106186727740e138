"""Unit tests for cdc/identifiers.py: table names as users type them and as SQL needs them."""

from __future__ import annotations

import pytest

from unified_profile.cdc.identifiers import TableName, quote_identifier


@pytest.mark.parametrize(
    ("text", "schema", "name"),
    [
        ("customers", "public", "customers"),
        ("Customers", "public", "customers"),
        ("CRM.Customers", "crm", "customers"),
        ("workspace_1.person", "workspace_1", "person"),
        ('workspace_1."person"', "workspace_1", "person"),
        ('workspace_1."Person"', "workspace_1", "Person"),
        ('"Workspace 1"."Person"', "Workspace 1", "Person"),
        ('"My ""quoted"" table"', "public", 'My "quoted" table'),
        ('crm."a.b"', "crm", "a.b"),
        ('"crm.eu".orders', "crm.eu", "orders"),
        ('"x"', "public", "x"),
        ('""""', "public", '"'),
        ("_t$1", "public", "_t$1"),
        ('crm."café"', "crm", "café"),
        ("a" * 63, "public", "a" * 63),
        ('"' + "é" * 31 + '"', "public", "é" * 31),  # 62 bytes
    ],
)
def test_parse(text: str, schema: str, name: str) -> None:
    assert TableName.parse(text) == TableName(schema, name)


def test_default_schema() -> None:
    assert TableName.parse("customers", default_schema="crm") == TableName("crm", "customers")
    assert TableName.parse("x.customers", default_schema="crm") == TableName("x", "customers")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'': expected a name at position 1"),
        ("crm.", "'crm.': expected a name at position 5"),
        (
            ".crm",
            "'.crm': unexpected '.' at position 1; quote names that are not plain lower-case identifiers",
        ),
        (
            "a..b",
            "'a..b': unexpected '.' at position 3; quote names that are not plain lower-case identifiers",
        ),
        ('"abc', "'\"abc': quote opened at position 1 is never closed"),
        ('crm."Person', "'crm.\"Person': quote opened at position 5 is never closed"),
        ('crm.""', "'crm.\"\"': empty quoted name at position 5"),
        (
            "a.b.c",
            "'a.b.c' has 3 dot-separated parts; write table or schema.table "
            '(quote a name that contains a dot: schema."my.table")',
        ),
        (
            'a."b".c',
            "'a.\"b\".c' has 3 dot-separated parts; write table or schema.table "
            '(quote a name that contains a dot: schema."my.table")',
        ),
        ("my-table", "'my-table': expected '.' at position 3, found '-'"),
        (
            "1abc",
            "'1abc': unexpected '1' at position 1; quote names that are not plain lower-case identifiers",
        ),
        (
            " crm",
            "' crm': unexpected ' ' at position 1; quote names that are not plain lower-case identifiers",
        ),
        ("crm ", "'crm ': expected '.' at position 4, found ' '"),
        ('crm."a"b', "'crm.\"a\"b': expected '.' at position 8, found 'b'"),
        ("a" * 64, f"{'a' * 64!r}: {'a' * 64!r} is longer than PostgreSQL's 63-byte limit"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        TableName.parse(text)
    assert str(info.value) == message


def test_limit_counts_bytes_not_characters() -> None:
    name = "é" * 32  # 32 characters, 64 bytes in UTF-8
    with pytest.raises(ValueError, match="longer than PostgreSQL's 63-byte limit"):
        TableName.parse(f'crm."{name}"')


def test_limit_applies_to_the_schema_too() -> None:
    with pytest.raises(ValueError, match="63-byte limit"):
        TableName.parse("s" * 64 + ".t")


@pytest.mark.parametrize(
    ("table", "quoted", "text"),
    [
        (TableName("public", "customers"), '"public"."customers"', "public.customers"),
        (TableName("workspace_1", "Person"), '"workspace_1"."Person"', "workspace_1.Person"),
        (
            TableName("public", 'My "quoted" table'),
            '"public"."My ""quoted"" table"',
            'public.My "quoted" table',
        ),
        (TableName("crm", "a.b"), '"crm"."a.b"', "crm.a.b"),
    ],
)
def test_quoted_and_str(table: TableName, quoted: str, text: str) -> None:
    assert table.quoted == quoted
    assert str(table) == text


@pytest.mark.parametrize(
    "text",
    ["customers", 'workspace_1."Person"', '"My ""quoted"" table"', 'crm."a.b"', '"x y"."z"'],
)
def test_quoted_form_parses_back_to_the_same_table(text: str) -> None:
    table = TableName.parse(text)
    assert TableName.parse(table.quoted) == table


def test_quote_identifier() -> None:
    assert quote_identifier("abc") == '"abc"'
    assert quote_identifier('a"b') == '"a""b"'
    assert quote_identifier("") == '""'


def test_table_names_are_hashable_and_ordered() -> None:
    names = [TableName("b", "a"), TableName("a", "z"), TableName.parse("b.a")]
    assert len(set(names)) == 2
    assert sorted(names)[0] == TableName("a", "z")
