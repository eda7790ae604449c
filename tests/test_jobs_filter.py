"""OData $filter: round trip, hostile input, and SQL that agrees with the evaluator.

As h11's fuzz target: any text parses or raises ``BadRequest`` (InvalidFilter),
never anything else; every tree the parser can make prints to text that parses
back to the same tree; and ``to_sql`` selects exactly what ``matches`` accepts.
"""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.jobs import filter
from pipeline.jobs.errors import BadRequest
from pipeline.jobs.filter import And, Compare, Or

compares = st.builds(Compare, st.sampled_from(filter.FIELDS), st.sampled_from(filter.OPS),
                     st.text(max_size=12))


def _trees(children: st.SearchStrategy[filter.Expr]) -> st.SearchStrategy[filter.Expr]:
    """And/Or of two or more items, none of its own kind (the parser's canonical trees)."""
    def joined(kind: type[And] | type[Or]) -> st.SearchStrategy[filter.Expr]:
        items = st.lists(children.filter(lambda t: not isinstance(t, kind)), min_size=2,
                         max_size=4)
        return items.map(lambda xs: kind(tuple(xs)))
    return joined(And) | joined(Or)


trees = st.recursive(compares, _trees, max_leaves=12)


@given(trees)
def test_parse_print_round_trip(tree: filter.Expr) -> None:
    text = filter.print_expr(tree)
    assert filter.parse(text) == tree
    assert filter.print_expr(filter.parse(text)) == text


@settings(max_examples=500)
@given(st.text(max_size=80) | st.text(alphabet="()' andorqeNAMElocti/_x", max_size=60))
def test_hostile_text_is_only_ever_bad_request(text: str) -> None:
    try:
        tree = filter.parse(text)
    except BadRequest as exc:
        assert exc.status == 400 and exc.code == "InvalidFilter"
        assert "\n" not in str(exc) and len(str(exc)) < 600
    else:
        assert filter.parse(filter.print_expr(tree)) == tree


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty"), ("state eq 'x'", "not a field"), ("name eq", "quoted string"),
    ("name gt 'a'", "eq or ne"), ("name eq 'a", "not closed"), ("(name eq 'a'", "not closed"),
    ("name eq 'a' xor name eq 'b'", "and, or or the end"), ("name eq \"a\"", "character"),
    ("(" * 40 + "name eq 'a'" + ")" * 40, "nested"), ("x" * 3000, "longer than"),
    (" or ".join(["name eq 'a'"] * 70), "comparisons"), ("name eq 'a' and", "ends"),
])
def test_errors_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(BadRequest, match=words) as bad:
        filter.parse(text)
    assert bad.value.code == "InvalidFilter"


def test_grammar_details() -> None:
    tree = filter.parse("Name EQ 'it''s' and (properties/STATE ne 'Closed' or "
                        "location eq 'West US')")
    assert tree == And((Compare("name", "eq", "it's"), Or((
        Compare("properties/state", "ne", "Closed"), Compare("location", "eq", "West US")))))
    assert filter.parse("((name eq 'a'))") == Compare("name", "eq", "a")
    assert filter.parse("name eq 'a' or name eq 'b' and name eq 'c'") == Or((
        Compare("name", "eq", "a"), And((Compare("name", "eq", "b"),
                                         Compare("name", "eq", "c")))))


ROWS = [("a-one", "Creating", "westus"), ("a-two", "Shipping", "westeurope"),
        ("b-one", "Closed", "eastus"), ("it's", "Shipping", "westus")]


@given(trees)
def test_sql_selects_what_matches_accepts(tree: filter.Expr) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (name TEXT, state TEXT, jobtype TEXT, location TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?, 'Import', ?)", ROWS)
    columns = {"name": "lower(name)", "properties/state": "lower(state)",
               "properties/jobType": "lower(jobtype)", "location": "lower(location)"}
    clause, args = filter.to_sql(tree, columns)
    got = {r[0] for r in conn.execute(f"SELECT name FROM t WHERE {clause}", args)}
    want = {name for name, state, location in ROWS if filter.matches(tree, {
        "name": name, "properties/state": state, "properties/jobType": "Import",
        "location": location})}
    assert got == want
