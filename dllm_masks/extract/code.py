"""Information-dense spans of source code: rules over Python's ``ast``, a token-level fallback.

The paper ("Mask Is What DLLM Needs", §2.1) marks *control-flow conditions* and *algorithm pivot
points* as the information-dense hubs of code, with GPT-4o, and names rule-based extraction over
the AST as future work. :func:`code_spans` is that rule set. Rules (choose a subset with
``rules=``; the default applies all):

=============  ===============================================================================
``condition``  the tests of ``if``/``elif``/``while``/``assert``, of conditional expressions
               (``a if TEST else b``), of comprehension filters and of ``match`` case guards
``iterable``   the iterable of ``for``/``async for`` loops and of comprehensions
``return``     the values of ``return``, ``yield`` and ``yield from``
``update``     augmented assignments (``x += 1``) anywhere; plain, annotated and walrus
               assignments inside a loop body (the state an iteration carries)
``recursion``  calls of the enclosing function by its own name (``fib(n - 1)``,
               ``self.walk(node.left)``)
``index``      subscripts whose index or slice does arithmetic (``a[i + 1]``, ``f[-1]``,
               ``s[::-1]``, ``xs[lo:mid + 1]``); the whole subscript is the span
=============  ===============================================================================

Spans cover the expression or statement itself (``i % 3 == 0``, not ``if``/``:``), with exact
character offsets: ``ast`` counts columns in UTF-8 bytes, converted here to characters.

Source that does not parse as Python (a truncated answer, another language, Python 2) falls back
to token-level rules over a language-agnostic tokenizer, and the result's ``meta`` says so:

=============  ===============================================================================
``condition``  what follows ``if``/``elif``/``else if``/``elsif``/``while``/``until``/``unless``
               /``switch``/``case``/``when``/``guard`` (the parenthesised condition, or the rest
               of the line up to ``:``/``{``/``then``/``do``); comparison (``==``, ``!=``,
               ``===``, ``<=``, ``>=``, and ``<``/``>`` written with spaces) and boolean
               (``&&``, ``||``, ``and``, ``or``, ``not``, ``!x``) operators with their operands
``iterable``   the header of ``for``/``foreach`` loops
``return``     what follows ``return``/``yield`` up to ``;`` or the end of the line
``update``     compound assignments (``+=``, ``<<=``, ...) with their operands, ``++``/``--``
               with the operand they update
``index``      subscripts whose index does arithmetic (``a[i + 1]``, ``dp[i - 1][j]``)
=============  ===============================================================================

(``recursion`` needs scopes and has no fallback form.) Markdown answers (the usual shape of
instruction-tuning data) are handled block by block: each fenced code block is parsed with
``ast`` when it is Python and with the fallback otherwise; prose outside the blocks gets no spans.

``target_rho=`` keeps only the most informative spans up to a density budget: conditions first,
then return values, recursion, updates, index arithmetic and iterables
(:mod:`dllm_masks.extract.budget`).
"""
from __future__ import annotations

import ast
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .budget import PRIORITY, budget_spans, check_target_rho
from .spans import Spans, check_rules, merge_spans

__all__ = ["code_spans", "fallback_spans", "RULES", "FALLBACK_RULES"]

RULES: Dict[str, str] = {
    "condition": "tests of if/elif/while/assert, conditional expressions, comprehension filters, case guards",
    "iterable": "iterables of for loops and comprehensions",
    "return": "values of return, yield and yield from",
    "update": "augmented assignments anywhere; assignments inside loop bodies",
    "recursion": "calls of the enclosing function by its own name",
    "index": "subscripts whose index or slice does arithmetic",
}
FALLBACK_RULES: Dict[str, str] = {
    "condition": "conditions after if/while/... keywords; comparison and boolean operators with their operands",
    "iterable": "headers of for/foreach loops",
    "return": "what follows return/yield",
    "update": "compound assignments and ++/-- with their operands",
    "index": "subscripts whose index does arithmetic",
}

PYTHON_LANGS = {"", "python", "py", "python3", "py3", "ipython", "ipython3", "sage"}
_NEWLINE = re.compile(r"\r\n|\r|\n")
# A fenced block: an opening ``` (or ~~~) line with an optional info string, up to the closing
# fence or the end of the text (an answer truncated inside a block).
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^\n]*\n(.*?)(?:^[ \t]{0,3}\1[ \t]*$|\Z)",
                    re.M | re.S)


# ---------------------------------------------------------------------------------------------
# Positions: ast (line, UTF-8 byte column) -> character offset
# ---------------------------------------------------------------------------------------------
class _Positions:
    """Maps ``ast`` positions (1-based line, UTF-8 byte column) to character offsets.

    Lines are split on ``\\r\\n``, ``\\r`` and ``\\n`` only, as Python's tokenizer does (not on the
    form feeds and Unicode separators that ``str.splitlines`` also honours).
    """

    def __init__(self, text: str):
        self.text = text
        self.starts = [0] + [m.end() for m in _NEWLINE.finditer(text)]
        self._bytes: Dict[int, Optional[bytes]] = {}

    def offset(self, lineno: int, col: int) -> int:
        i = lineno - 1
        start = self.starts[i]
        if i not in self._bytes:
            end = self.starts[i + 1] if i + 1 < len(self.starts) else len(self.text)
            line = self.text[start:end]
            self._bytes[i] = None if line.isascii() else line.encode("utf-8", "surrogatepass")
        b = self._bytes[i]
        if b is None:
            return start + col
        return start + len(b[:col].decode("utf-8", "replace"))

    def span(self, node) -> Tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset))


def _has_arith(node) -> bool:
    return any(isinstance(n, (ast.BinOp, ast.UnaryOp)) for n in ast.walk(node))


class _Collector(ast.NodeVisitor):
    def __init__(self, rules: Sequence[str]):
        self.rules = set(rules)
        self.found: List[Tuple[ast.AST, str]] = []
        self.funcs: List[Optional[str]] = []
        self.loop_depth = 0

    def add(self, node, rule: str) -> None:
        if node is not None and rule in self.rules and getattr(node, "end_col_offset", None) is not None:
            self.found.append((node, rule))

    # scopes ---------------------------------------------------------------------------------
    def _function(self, node) -> None:
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        self.funcs.append(node.name)
        depth, self.loop_depth = self.loop_depth, 0  # a def in a loop body is not the loop's state
        for stmt in node.body:
            self.visit(stmt)
        self.loop_depth = depth
        self.funcs.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node) -> None:
        self.funcs.append(None)
        depth, self.loop_depth = self.loop_depth, 0
        self.generic_visit(node)
        self.loop_depth = depth
        self.funcs.pop()

    # loops ----------------------------------------------------------------------------------
    def _loop_body(self, body) -> None:
        self.loop_depth += 1
        for stmt in body:
            self.visit(stmt)
        self.loop_depth -= 1

    def visit_For(self, node) -> None:
        self.add(node.iter, "iterable")
        self.visit(node.target)
        self.visit(node.iter)
        self._loop_body(node.body)
        for stmt in node.orelse:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_While(self, node) -> None:
        self.add(node.test, "condition")
        self.visit(node.test)
        self._loop_body(node.body)
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_comprehension(self, node) -> None:
        self.add(node.iter, "iterable")
        for cond in node.ifs:
            self.add(cond, "condition")
        self.generic_visit(node)

    # conditions -----------------------------------------------------------------------------
    def visit_If(self, node) -> None:  # elif is an If in orelse
        self.add(node.test, "condition")
        self.generic_visit(node)

    def visit_IfExp(self, node) -> None:
        self.add(node.test, "condition")
        self.generic_visit(node)

    def visit_Assert(self, node) -> None:
        self.add(node.test, "condition")
        self.generic_visit(node)

    def visit_match_case(self, node) -> None:
        self.add(node.guard, "condition")
        self.generic_visit(node)

    # values and updates ---------------------------------------------------------------------
    def visit_Return(self, node) -> None:
        self.add(node.value, "return")
        self.generic_visit(node)

    def visit_Yield(self, node) -> None:
        self.add(node.value, "return")
        self.generic_visit(node)

    visit_YieldFrom = visit_Yield

    def visit_AugAssign(self, node) -> None:
        self.add(node, "update")
        self.generic_visit(node)

    def visit_Assign(self, node) -> None:
        if self.loop_depth:
            self.add(node, "update")
        self.generic_visit(node)

    def visit_AnnAssign(self, node) -> None:
        if self.loop_depth and node.value is not None:
            self.add(node, "update")
        self.generic_visit(node)

    def visit_NamedExpr(self, node) -> None:
        if self.loop_depth:
            self.add(node, "update")
        self.generic_visit(node)

    def visit_Call(self, node) -> None:
        name = self.funcs[-1] if self.funcs else None
        if name is not None:
            f = node.func
            if (isinstance(f, ast.Name) and f.id == name) or (
                    isinstance(f, ast.Attribute) and f.attr == name
                    and isinstance(f.value, ast.Name) and f.value.id in ("self", "cls")):
                self.add(node, "recursion")
        self.generic_visit(node)

    def visit_Subscript(self, node) -> None:
        # a chain a[i - 1][j] is one subscript: marked whole when any of its indices computes
        chain, value = [node], node.value
        while isinstance(value, ast.Subscript):
            chain.append(value)
            value = value.value
        if any(_has_arith(c.slice) for c in chain):
            self.add(node, "index")
        self.visit(value)
        for c in reversed(chain):
            self.visit(c.slice)


def _parse(text: str):
    """``ast.parse`` that never raises: returns (tree, None) or (None, "ErrorType: message")."""
    try:
        return ast.parse(text), None
    except SyntaxError as e:  # IndentationError, TabError included
        where = f" (line {e.lineno})" if e.lineno else ""
        return None, f"{type(e).__name__}: {e.msg}{where}"
    except (ValueError, MemoryError, RecursionError, OverflowError) as e:  # null bytes, deep nesting
        return None, f"{type(e).__name__}: {e}"


def _tree_spans(tree, text: str, rules: Sequence[str]) -> List[Tuple[int, int, str]]:
    col = _Collector(rules)
    try:
        col.visit(tree)
    except RecursionError:  # a pathologically deep tree: keep what was collected
        pass
    pos = _Positions(text)
    return [(*pos.span(n), rule) for n, rule in col.found]


# ---------------------------------------------------------------------------------------------
# Fallback: token-level rules for text that is not Python
# ---------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
  (?P<nl>\r\n|\r|\n)
| (?P<ws>[ \t\f\v]+)
| (?P<str>"(?:[^"\\\r\n]|\\.){0,500}"|'(?:[^'\\\r\n]|\\.){0,500}'|`[^`\r\n]{0,500}`)
| (?P<num>\d[\w.]*)
| (?P<id>[^\W\d][\w$]*|\$[\w$]*|@[\w$]+)
| (?P<op>===|!==|<<=|>>=|\*\*=|//=|==|!=|<=|>=|&&|\|\||\+=|-=|\*=|/=|%=|&=|\|=|\^=|\+\+|--|->|=>|::|:=|<<|>>|\*\*|//)
| (?P<ch>.)
""", re.X | re.S)

_COND_KW = {"if", "elif", "elsif", "elseif", "while", "until", "unless", "switch", "case", "when", "guard"}
_LOOP_KW = {"for", "foreach"}
_RET_KW = {"return", "yield"}
_BOOL_WORDS = {"and", "or", "not"}
_HEADER_END_KW = {"then", "do"}
_STMT_KW = _COND_KW | _LOOP_KW | _RET_KW  # a header or statement never runs into one of these
_HEADER_BREAK_KW = _HEADER_END_KW | _STMT_KW | {"else"}
# Words that end an operand: control keywords and declarations in the common languages.
_STOP_WORDS = _COND_KW | _LOOP_KW | _RET_KW | _BOOL_WORDS | _HEADER_END_KW | {
    "else", "in", "is", "def", "fn", "func", "function", "let", "var", "const", "val", "auto",
    "int", "long", "float", "double", "char", "bool", "boolean", "string", "String", "void",
    "public", "private", "static", "new", "delete", "throw", "raise", "await", "lambda", "import",
    "from", "as", "with", "try", "catch", "except", "finally", "break", "continue", "pass",
    "echo", "print", "fi", "done", "end", "begin", "where", "select", "go", "defer", "mut",
}
_CMP = {"==", "!=", "===", "!==", "<=", ">="}
_SPACED_CMP = {"<", ">"}  # comparisons only when written with spaces (else generics, includes)
_BOOL_OPS = {"&&", "||"}
_COMPOUND = {"+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>=", "**=", "//="}
_ARITH = {"+", "-", "*", "/", "%", "**", "//", "<<", ">>", "&", "|", "^", "~"}
_OPERAND_OPS = _ARITH | {".", "::", "->", "?."}
_INDEX_ARITH = {"+", "-", "*", "/", "%", "//", ">>", "<<"}
_OPEN, _CLOSE = "([{", ")]}"
_MAX_WALK = 64    # tokens an operand may extend over
_MAX_HEADER = 256  # tokens a parenthesised condition may span


class _Tok:
    __slots__ = ("kind", "text", "start", "end")

    def __init__(self, kind, text, start, end):
        self.kind, self.text, self.start, self.end = kind, text, start, end


def _tokenize(text: str) -> List[_Tok]:
    toks = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "ws":
            continue
        if kind == "ch":
            kind = "op"
        toks.append(_Tok(kind, m.group(), m.start(), m.end()))
    return toks


def _match_brackets(toks: List[_Tok]) -> List[int]:
    """Index of each bracket's partner (or -1); unbalanced text is tolerated."""
    partner = [-1] * len(toks)
    stack: List[int] = []
    for i, t in enumerate(toks):
        if t.kind != "op":
            continue
        if t.text in _OPEN:
            stack.append(i)
        elif t.text in _CLOSE:
            want = _OPEN[_CLOSE.index(t.text)]
            # pop to the nearest matching opener; a stray closer matches nothing
            for k in range(len(stack) - 1, max(-1, len(stack) - 33), -1):
                if toks[stack[k]].text == want:
                    partner[i], partner[stack[k]] = stack[k], i
                    del stack[k:]
                    break
    return partner


def _is_atom(t: _Tok) -> bool:
    return t.kind in ("num", "str") or (t.kind == "id" and t.text not in _STOP_WORDS)


def _is_binop(t: _Tok) -> bool:
    return t.kind == "op" and t.text in _OPERAND_OPS


def _is_prefix(t: _Tok) -> bool:
    return (t.kind == "op" and t.text in ("!", "-", "~", "*", "&")) or (t.kind == "id" and t.text == "not")


def _walk_left(toks, partner, i) -> int:
    """First token index of the operand that ends at token i (i + 1 when there is none).

    Operands alternate values (names, numbers, strings, bracket groups; ``f(x)`` and ``a[i]``
    when the bracket touches what precedes it) and binary operators; a prefix ``!`` joins.
    """
    start, j, steps, want_value = i + 1, i, 0, True
    while j >= 0 and steps < _MAX_WALK:
        steps += 1
        t = toks[j]
        if want_value:
            if t.kind == "op" and t.text in (")", "]") and partner[j] >= 0:
                j = start = partner[j]
            elif _is_atom(t):
                start = j
            else:
                break
            want_value = False
            j -= 1
        elif _is_binop(t):
            want_value = True
            j -= 1
        elif t.kind == "op" and t.text == "!" or (t.kind == "id" and t.text == "not"):
            start = j
            j -= 1
        elif toks[start].text in ("(", "[") and toks[start].kind == "op" and t.end == toks[start].start and (
                _is_atom(t) or t.text in (")", "]")):
            want_value = True  # a call or subscript: the callee is part of the operand
        else:
            break
    return start


def _walk_right(toks, partner, i) -> int:
    """Last token index of the operand that starts at token i (i - 1 when there is none)."""
    end, j, n, steps, want_value = i - 1, i, len(toks), 0, True
    while j < n and steps < _MAX_WALK:
        steps += 1
        t = toks[j]
        if want_value:
            if _is_prefix(t):
                j += 1
                continue
            if t.kind == "op" and t.text in ("(", "[") and partner[j] > j:
                j = end = partner[j]
            elif _is_atom(t):
                end = j
            else:
                break
            want_value = False
            j += 1
        elif _is_binop(t):
            want_value = True
            j += 1
        elif t.kind == "op" and t.text in ("(", "[") and t.start == toks[j - 1].end:
            want_value = True  # call or subscript
        elif t.kind == "op" and t.text in ("++", "--") and t.start == toks[j - 1].end:
            end = j
            j += 1
        else:
            break
    return end


def _header(toks, partner, i) -> Optional[Tuple[int, int]]:
    """Token range [a, b] of the condition/header that follows keyword token i."""
    n = len(toks)
    j = i + 1
    if j < n and toks[j].kind == "op" and toks[j].text == "(" and partner[j] > j:
        k = partner[j]
        if k - j <= _MAX_HEADER:
            # `if (a) && (b)` and `while (x) {`: take the parenthesised part, plus a tail that
            # continues the expression on the same line
            end = k
            while end + 1 < n and toks[end + 1].kind != "nl" and (
                    toks[end + 1].text in _BOOL_OPS or toks[end + 1].text in _CMP):
                end = _walk_right(toks, partner, end + 2)
            return (j + 1, k - 1) if end == k else (j, end)
    a, k, depth = j, j, 0
    last = None
    while k < n and k - j < _MAX_HEADER:
        t = toks[k]
        if t.kind == "nl" and depth == 0:
            break
        if t.kind == "op":
            if t.text in "([{" and not (t.text == "{" and depth == 0):
                depth += 1
            elif t.text in ")]}" and depth > 0:
                depth -= 1
            elif depth == 0 and t.text in (":", "{"):
                break
            elif depth == 0 and t.text == ";":  # Go's `for i := 0; i < n; i++`, shell's `]; then`
                k += 1
                continue
        elif t.kind == "id" and (t.text in _STMT_KW or (depth == 0 and t.text in _HEADER_BREAK_KW)):
            break
        last = k
        k += 1
    return None if last is None else (a, last)


def _statement_tail(toks, partner, i) -> Optional[Tuple[int, int]]:
    """Token range after token i up to ``;``/``}`` or the end of the line (brackets may span lines)."""
    n = len(toks)
    k, last = i + 1, None
    while k < n and k - i <= _MAX_HEADER:
        t = toks[k]
        if t.kind == "nl" or (t.kind == "op" and t.text in (";", "}")) or (t.kind == "id" and t.text in _STMT_KW):
            break
        if t.kind == "op" and t.text in "([{" and partner[k] > k:
            k = partner[k]
        last = k
        k += 1
    return None if last is None else (i + 1, last)


def fallback_spans(text: str, rules: Optional[Iterable[str]] = None) -> List[Tuple[int, int]]:
    """Spans of ``text`` by the token-level fallback rules (any language). Not merged.

    Linear in the length of ``text`` (every walk is bounded); never raises on a string.
    """
    return [(s, e) for s, e, _ in _fallback_labelled(text, check_rules("rules", rules, FALLBACK_RULES))]


def _fallback_labelled(text: str, rules: Sequence[str]) -> List[Tuple[int, int, str]]:
    """(start, end, rule) spans of the fallback rules (validated names), in discovery order."""
    rules = set(rules)
    toks = _tokenize(text)
    partner = _match_brackets(toks)
    out: List[Tuple[int, int, str]] = []
    arith = [0]  # arith[k]: arithmetic operators among toks[:k]
    for t in toks:
        arith.append(arith[-1] + (t.kind == "op" and t.text in _INDEX_ARITH))

    def emit(a: int, b: int, rule: str) -> None:
        if 0 <= a <= b < len(toks):
            out.append((toks[a].start, toks[b].end, rule))

    for i, t in enumerate(toks):
        if t.kind == "id":
            w = t.text
            if w in _COND_KW and "condition" in rules:
                r = _header(toks, partner, i)
                if r:
                    emit(*r, "condition")
            elif w in _LOOP_KW and "iterable" in rules:
                r = _header(toks, partner, i)
                if r:
                    emit(*r, "iterable")
            elif w in _RET_KW and "return" in rules:
                r = _statement_tail(toks, partner, i)
                if r:
                    emit(*r, "return")
            elif w in ("and", "or") and "condition" in rules:
                emit(_walk_left(toks, partner, i - 1), _walk_right(toks, partner, i + 1), "condition")
            elif w == "not" and "condition" in rules:
                b = _walk_right(toks, partner, i + 1)
                if b > i:
                    emit(i, b, "condition")
            continue
        if t.kind != "op":
            continue
        op = t.text
        if "condition" in rules and (op in _CMP or op in _BOOL_OPS or (
                op in _SPACED_CMP and t.start > 0 and t.end < len(text)
                and text[t.start - 1].isspace() and text[t.end].isspace())):
            a, b = _walk_left(toks, partner, i - 1), _walk_right(toks, partner, i + 1)
            if a < i or b > i:
                emit(a, b, "condition")
        elif op == "!" and "condition" in rules and i + 1 < len(toks) and toks[i + 1].start == t.end:
            b = _walk_right(toks, partner, i + 1)
            if b > i:
                emit(i, b, "condition")
        elif "update" in rules and op in _COMPOUND:
            a = _walk_left(toks, partner, i - 1)
            b = _walk_right(toks, partner, i + 1)
            if a < i and b > i:
                emit(a, b, "update")
        elif "update" in rules and op in ("++", "--"):
            if i > 0 and toks[i - 1].end == t.start and (_is_atom(toks[i - 1]) or toks[i - 1].text in (")", "]")):
                emit(_walk_left(toks, partner, i - 1), i, "update")       # x++
            elif i + 1 < len(toks) and toks[i + 1].start == t.end and toks[i + 1].kind == "id":
                emit(i, _walk_right(toks, partner, i + 1), "update")      # ++x
        elif "index" in rules and op == "[" and partner[i] > i and i > 0 and (
                toks[i - 1].kind == "id" or toks[i - 1].text in (")", "]")) and toks[i - 1].end == t.start:
            if arith[partner[i]] - arith[i + 1] > 0:  # arithmetic inside the brackets
                emit(_walk_left_subscript(toks, partner, i - 1), partner[i], "index")
    return out


def _walk_left_subscript(toks, partner, i) -> int:
    """Start of the subscripted value ending at token i (``dp[i - 1]`` -> ``dp``; ``a.b[k]``)."""
    j, steps = i, 0
    while j >= 0 and steps < _MAX_WALK:
        steps += 1
        t = toks[j]
        if t.kind == "op" and t.text in ")]" and partner[j] >= 0:
            j = partner[j] - 1
        elif t.kind == "id" or (t.kind == "op" and t.text == "."):
            j -= 1
        else:
            break
    return j + 1


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def _python_like(lang: str) -> bool:
    return lang.lower().lstrip("{.").rstrip("}") in PYTHON_LANGS


def _parse_region(text: str, rules: Sequence[str], fb_rules: Sequence[str], parsed=None):
    """(labelled spans, method, error, how) for one region of code, trying ast then the fallback.

    ``parsed``: the (tree, error) of ``_parse(text)`` when the caller has it already.
    """
    tree, err = parsed if parsed is not None else _parse(text)
    if tree is not None:
        return _tree_spans(tree, text, rules), "ast", None, "source"
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if first[:1] in (" ", "\t"):
        # an indented function body (e.g. a HumanEval solution without its prompt): parse it
        # as the body of a dummy def; columns are unchanged, lines shift by one
        header = "def _body_():\n"
        tree2, _ = _parse(header + text)
        if tree2 is not None:
            spans = [(s - len(header), e - len(header), r) for s, e, r in _tree_spans(tree2, header + text, rules)]
            return spans, "ast", None, "wrapped"
    return _fallback_labelled(text, fb_rules), "fallback", err, "fallback"


def code_spans(source: str, *, prefix: str = "", rules: Optional[Iterable[str]] = None,
               target_rho: Optional[float] = None, measure=None) -> Spans:
    """Information-dense character spans of code.

    Parameters
    ----------
    source : str
        The code (an SFT answer): plain Python, Python in Markdown fences, or another language.
    prefix : str
        Text that precedes ``source`` and is parsed together with it when that parses (e.g. a
        HumanEval prompt: the signature and docstring that the solution body completes). Spans
        are returned relative to ``source`` and clipped to it. Ignored when the concatenation
        does not parse.
    rules : iterable of str, optional
        Subset of :data:`RULES` to apply (default: all). The fallback applies the same names where
        it has them (see :data:`FALLBACK_RULES`).
    target_rho : float in (0, 1], optional
        Density budget (:mod:`dllm_masks.extract.budget`): keep the spans of the highest priority
        (conditions, then return values, then recursion, updates, index arithmetic, iterables)
        while they cover at most this share of ``source``. None (default): keep every span.
    measure : callable, optional
        Unit of the budget: characters (default) or
        :func:`~dllm_masks.extract.budget.token_measure` of ``source``'s token offsets.

    Returns
    -------
    Spans
        Sorted, merged half-open ``(start, end)`` character offsets into ``source``. ``meta``:
        ``method`` — ``"ast"`` (everything parsed), ``"fallback"`` (nothing parsed: token rules),
        or ``"mixed"`` (Markdown blocks, some parsed and some not); ``parsed`` — what was
        parsed: ``"prefix+source"``, ``"source"``, ``"wrapped"`` (an indented body inside a dummy
        ``def``), ``"blocks"`` (fenced blocks) or ``"fallback"``; ``rules``; ``error`` — the
        syntax error that sent (part of) the text to the fallback, else None; with blocks,
        ``blocks`` — a list of ``{"start", "end", "lang", "method"}``; with ``target_rho``,
        ``budget`` — what :func:`~dllm_masks.extract.budget.budget_spans` reports.

    Raises
    ------
    TypeError
        ``source`` or ``prefix`` is not a str; ``target_rho`` is not a number. Never raises on
        the content of a str.
    ValueError
        ``target_rho`` is not in (0, 1].

    Examples
    --------
    >>> src = "def f(n):\\n    if n < 2:\\n        return n\\n    return f(n - 1) + f(n - 2)\\n"
    >>> s = code_spans(src)
    >>> s.texts(src), s.meta["method"]
    (['n < 2', 'n', 'f(n - 1) + f(n - 2)'], 'ast')
    >>> code_spans(src, target_rho=0.2).texts(src)  # the condition, then the shorter return value
    ['n < 2', 'n']
    """
    if not isinstance(source, str):
        raise TypeError(f"source: expected a str, got {type(source).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix: expected a str, got {type(prefix).__name__}")
    rules = check_rules("rules", rules, RULES)
    target = check_target_rho(target_rho)
    labelled, meta = _labelled(source, prefix, rules)
    if target is None:
        return Spans(merge_spans(((s, e) for s, e, _ in labelled), hi=len(source)), meta)
    kept, meta["budget"] = budget_spans(labelled, len(source), target, priority=PRIORITY["code"], measure=measure)
    return Spans(kept, meta)


def _labelled(source: str, prefix: str, rules: Sequence[str]) -> Tuple[List[Tuple[int, int, str]], dict]:
    """(start, end, rule) spans of ``source`` (not merged, possibly reaching outside it) and the
    meta of :func:`code_spans`; arguments already validated."""
    fb_rules = [r for r in rules if r in FALLBACK_RULES]
    meta = {"rules": list(rules), "error": None}

    if prefix:
        tree, _ = _parse(prefix + source)
        if tree is not None:
            P = len(prefix)
            meta.update(method="ast", parsed="prefix+source")
            return [(s - P, e - P, r) for s, e, r in _tree_spans(tree, prefix + source, rules)], meta

    parsed = _parse(source)
    blocks = [] if parsed[0] is not None else list(_FENCE.finditer(source))
    if not blocks:
        spans, method, e, how = _parse_region(source, rules, fb_rules, parsed)
        meta.update(method=method, parsed=how, error=e)
        return spans, meta

    spans, methods, errors, info = [], set(), [], []
    for m in blocks:
        lang, body, off = m.group(2), m.group(3), m.start(3)
        if _python_like(lang):
            sp, method, e, _ = _parse_region(body, rules, fb_rules)
        else:
            sp, method, e = _fallback_labelled(body, fb_rules), "fallback", f"language {lang!r} is not Python"
        spans.extend((s + off, t + off, r) for s, t, r in sp)
        methods.add(method)
        if e:
            errors.append(e)
        info.append({"start": off, "end": off + len(body), "lang": lang, "method": method})
    method = methods.pop() if len(methods) == 1 else "mixed"
    meta.update(method=method, parsed="blocks", blocks=info, error="; ".join(errors) or None)
    return spans, meta
