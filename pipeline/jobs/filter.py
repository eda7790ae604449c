"""OData ``$filter`` for the job listings: a parser, a printer and an evaluator.

Pure (no I/O), like ``rules``: text in, a frozen tree out, ``BadRequest``
(``InvalidFilter``, naming the problem and where) for anything else, whatever
the text.  The grammar is the subset of OData 4.01 an Azure listing of import
jobs needs::

    expr     := term ("or" term)*
    term     := factor ("and" factor)*
    factor   := "(" expr ")" | field ("eq" | "ne") literal
    field    := name | properties/state | properties/jobType | location
    literal  := "'" (any character but "'", or "''")* "'"

Keywords and field names are matched without regard to case (``Name EQ 'x'``
reads as ``name eq 'x'``); literals keep theirs, and the comparison itself is
the catalog's business (``to_sql``: case-insensitive, as ARM compares names).
Limits keep hostile input cheap: ``MAX_CHARS`` of text, ``MAX_DEPTH`` nested
parentheses and ``MAX_TERMS`` comparisons.

``print_expr(parse(text))`` is canonical text, and ``parse(print_expr(tree))``
gives ``tree`` back for any tree the parser can produce (``And``/``Or`` hold at
least two items, and never an item of their own kind: ``a and b and c`` is one
``And`` of three).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.jobs.errors import BadRequest

FIELDS = ("name", "properties/state", "properties/jobType", "location")
OPS = ("eq", "ne")
MAX_CHARS = 2048
MAX_DEPTH = 16
MAX_TERMS = 64
_CANONICAL = {f.lower(): f for f in FIELDS}


def ascii_fold(_field: str, value: str) -> str:
    """Lowercase ASCII letters only, as SQLite's lower() does: both sides agree."""
    return "".join(c.lower() if c.isascii() else c for c in value)


Fold = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class Compare:
    field: str   # one of FIELDS, canonical spelling
    op: str      # "eq" or "ne"
    value: str


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Expr, ...]


Expr = Compare | And | Or


def _bad(text: str, pos: int, what: str) -> BadRequest:
    shown = text[max(0, pos - 10):pos + 10]
    near = "".join(c if c.isprintable() else "?" for c in shown)
    return BadRequest(f"$filter: {what} at character {pos + 1} (near {near!r}); write "
                      "comparisons such as properties/state eq 'Shipping', joined with and/or "
                      f"(fields: {', '.join(FIELDS)}; operators: eq, ne)", "InvalidFilter")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, position): kinds are '(', ')', 'word' and 'str'."""
    out: list[tuple[str, str, int]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t":
            i += 1
        elif c in "()":
            out.append((c, c, i))
            i += 1
        elif c == "'":
            start, i, chars = i, i + 1, []
            while True:
                if i >= len(text):
                    raise _bad(text, start, "a string is not closed with '")
                if text[i] == "'":
                    if text[i + 1:i + 2] == "'":
                        chars.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                chars.append(text[i])
                i += 1
            out.append(("str", "".join(chars), start))
        elif c.isascii() and (c.isalnum() or c in "/_"):
            start = i
            while i < len(text) and text[i].isascii() and (text[i].isalnum() or text[i] in "/_"):
                i += 1
            out.append(("word", text[start:i], start))
        else:
            raise _bad(text, i, f"unexpected character {c!r}")
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0
        self.terms = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1].lower() == word:
            self.at += 1
            return True
        return False

    def where(self) -> int:
        tok = self.peek()
        return tok[2] if tok is not None else len(self.text)

    def expr(self, depth: int) -> Expr:
        items = [self.term(depth)]
        while self.keyword("or"):
            items.append(self.term(depth))
        return _join(Or, items)

    def term(self, depth: int) -> Expr:
        items = [self.factor(depth)]
        while self.keyword("and"):
            items.append(self.factor(depth))
        return _join(And, items)

    def factor(self, depth: int) -> Expr:
        tok = self.peek()
        if tok is None:
            raise _bad(self.text, len(self.text), "the filter ends where a comparison should be")
        if tok[0] == "(":
            if depth >= MAX_DEPTH:
                raise _bad(self.text, tok[2], f"more than {MAX_DEPTH} nested parentheses")
            self.at += 1
            inner = self.expr(depth + 1)
            close = self.peek()
            if close is None or close[0] != ")":
                raise _bad(self.text, self.where(), "a '(' is not closed")
            self.at += 1
            return inner
        if tok[0] != "word" or tok[1].lower() not in _CANONICAL:
            raise _bad(self.text, tok[2], f"{tok[1]!r} is not a field this listing filters on")
        self.at += 1
        op = self.peek()
        if op is None or op[0] != "word" or op[1].lower() not in OPS:
            raise _bad(self.text, self.where(), "expected eq or ne after the field")
        self.at += 1
        value = self.peek()
        if value is None or value[0] != "str":
            raise _bad(self.text, self.where(), "expected a quoted string such as 'Shipping'")
        self.at += 1
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise _bad(self.text, tok[2], f"more than {MAX_TERMS} comparisons")
        return Compare(_CANONICAL[tok[1].lower()], op[1].lower(), value[1])


def _join(kind: type[And] | type[Or], items: list[Expr]) -> Expr:
    if len(items) == 1:
        return items[0]
    flat: list[Expr] = []
    for item in items:  # (a and b) and c is a and b and c: one canonical tree
        flat.extend(item.items if isinstance(item, kind) else (item,))
    return kind(tuple(flat))


def parse(text: object) -> Expr:
    """The tree of a ``$filter`` value, or BadRequest (InvalidFilter) saying what is wrong."""
    if not isinstance(text, str):
        raise BadRequest("$filter must be text", "InvalidFilter")
    if len(text) > MAX_CHARS:
        raise BadRequest(f"$filter is longer than {MAX_CHARS} characters", "InvalidFilter")
    if not text.strip():
        raise BadRequest("$filter is empty; leave it out to list everything", "InvalidFilter")
    parser = _Parser(text)
    tree = parser.expr(0)
    if parser.peek() is not None:
        raise _bad(text, parser.where(), "expected and, or or the end of the filter")
    return tree


def print_expr(tree: Expr) -> str:
    """Canonical text: parse(print_expr(t)) == t."""
    if isinstance(tree, Compare):
        return f"{tree.field} {tree.op} '{tree.value.replace(chr(39), chr(39) * 2)}'"
    word = " and " if isinstance(tree, And) else " or "
    return word.join(print_expr(i) if isinstance(i, Compare) else f"({print_expr(i)})"
                     for i in tree.items)


def matches(tree: Expr, values: Mapping[str, str], fold: Fold = ascii_fold) -> bool:
    """Does a job whose fields are ``values`` pass?  ``fold`` normalizes both sides."""
    if isinstance(tree, Compare):
        same = fold(tree.field, values[tree.field]) == fold(tree.field, tree.value)
        return same if tree.op == "eq" else not same
    results = (matches(i, values, fold) for i in tree.items)
    return all(results) if isinstance(tree, And) else any(results)


def to_sql(tree: Expr, columns: Mapping[str, str],
           fold: Fold = ascii_fold) -> tuple[str, list[Any]]:
    """A WHERE clause (with ``?`` parameters) equal to ``matches``: ``columns`` maps each
    field to an SQL expression whose value is already folded as ``fold`` folds."""
    if isinstance(tree, Compare):
        return (f"({columns[tree.field]} {'=' if tree.op == 'eq' else '!='} ?)",
                [fold(tree.field, tree.value)])
    parts = [to_sql(i, columns, fold) for i in tree.items]
    joiner = " AND " if isinstance(tree, And) else " OR "
    return ("(" + joiner.join(p[0] for p in parts) + ")",
            [arg for p in parts for arg in p[1]])
