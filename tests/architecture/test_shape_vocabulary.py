"""Shape comments use one vocabulary: the axis names listed in docs/design.md ("Shape vocabulary").

Every bracketed axis list in a comment or docstring of ``latentlens/`` and ``dashboards/`` that names
at least one axis (a vocabulary word or a known foreign spelling such as ``B``, ``dim``, ``tokens``)
must use only vocabulary words, numbers, ``...`` and ``*``/``+``/``|`` between them.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT / "latentlens", ROOT / "dashboards")

# Spellings the vocabulary replaced; a bracket group with one of them is a shape comment too.
FOREIGN = set(
    "B b L T D d C c H W h w n N m k q F V I P Sq I_k dim dims tokens heads head_dim nq nk ncols rows cols "
    "features n_features n_samples n_classes n_components n_pairs n_captions samples steps blocks concepts "
    "keys queries channels classes pairs sites cells kmax max_length length seq side canvas inner kept "
    "kept_pair tok total parameters spc image_tokens text_tokens n_train max_classes border_pixels".split()
)
# An axis: a name or number, or a product/sum/alternative of them (``param*channel``, ``1|head``, ``2*batch``).
_OPERAND = r"(?:\d+|\d*[A-Za-z_][A-Za-z0-9_]*)"
_AXIS = re.compile(rf"^(?:\*?{_OPERAND}(?:\s*[*+|]\s*{_OPERAND})*|\.\.\.)$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# ``[...]`` not right after a name, bracket, quote or dot (that would be indexing or a subscript type).
_BRACKETS = re.compile(r"(?<![A-Za-z0-9_\]\).'\"])\[([^\[\]\n]+)\]")
_PARENS = re.compile(r"\(([^()\n]+)\)")  # only after ``.shape`` on the same line


def vocabulary() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("### Shape vocabulary", 1)[1].split("Fixed sizes", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", section))


def doc_texts(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every comment and every docstring line of a Python source."""
    doc_lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    doc_lines.add(first.value.lineno)
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
        elif tok.type == tokenize.STRING and tok.start[0] in doc_lines:
            out += [(tok.start[0] + k, line) for k, line in enumerate(tok.string.splitlines())]
    return out


def shape_groups(text: str, known: set[str], after_shape: bool = False) -> list[tuple[str, list[str]]]:
    """``(group, names outside the vocabulary)`` of each shape in ``text`` (groups naming no known axis are not
    shapes); ``after_shape``: the line reads a ``.shape``, so ``(...)`` groups count too."""
    found = list(_BRACKETS.finditer(text))
    if after_shape:
        found += list(_PARENS.finditer(text))
    out = []
    for m in found:
        axes = [a.strip() for a in m.group(1).split(",") if a.strip()]
        if not axes or not all(_AXIS.match(a) for a in axes):
            continue
        names = [n for a in axes for n in _NAME.findall(a.replace("...", ""))]
        names = [re.sub(r"^\d+", "", n) for n in names]
        if any(n in known or n in FOREIGN for n in names):
            out.append((m.group(0), [n for n in names if n not in known]))
    return out


def scan(source: str, known: set[str]) -> tuple[int, list[str]]:
    count, bad = 0, []
    lines = source.splitlines()
    for line, text in doc_texts(source):
        for group, outside in shape_groups(text, known, ".shape" in lines[line - 1]):
            count += 1
            if outside:
                bad.append(f"{line}: {group} ({', '.join(outside)} not in the vocabulary)")
    return count, bad


def test_the_vocabulary_holds_every_site_dimension():
    known = vocabulary()
    assert {"sample", "step", "batch", "head", "token", "query", "key", "channel", "height", "width"} <= known
    dims = set()  # the dims tuples of the adapters' sites, the recorder's maps and the store's arrays
    paths = [*(ROOT / "latentlens" / "adapters").glob("*.py"), *(ROOT / "latentlens" / "capture").glob("*.py")]
    for path in [*paths, ROOT / "latentlens" / "store.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            elts = node.elts if isinstance(node, ast.Tuple) else []
            values = [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if elts and len(values) == len(elts) and values[0] in ("batch", "sample"):
                dims |= set(values)
    assert len(dims) >= 8, dims  # the SiteSpec.dims tuples were found
    assert dims <= known, f"SiteSpec dims outside docs/design.md's vocabulary: {sorted(dims - known)}"


def test_the_checker_sees_foreign_spellings():
    known = vocabulary()
    source = (
        '"""Images ``[B, 3, H, W]``."""\n'
        "x = f(y)  # [B, L, 384]\n"
        "z = g(x)  # [batch, token, channel]\n"
        "w = x[i, j]  # [2*batch, 1|head, query, key]\n"
        "q = [a, b]  # [uncond, cond] order\n"
        "v = x.shape  # (n_samples, tokens, channel)\n"
    )
    count, bad = scan(source, known)
    assert count == 5
    assert [b.split(":")[0] for b in bad] == ["1", "2", "6"], bad


def test_shape_comments_use_only_the_vocabulary():
    known = vocabulary()
    total, problems = 0, []
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            count, bad = scan(path.read_text(encoding="utf-8"), known)
            total += count
            problems += [f"{path.relative_to(ROOT)}:{b}" for b in bad]
    assert total >= 400, f"only {total} shape comments found; the scanner no longer sees them"
    assert not problems, "shape comments outside docs/design.md's vocabulary:\n" + "\n".join(problems)
