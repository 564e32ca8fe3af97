"""Cheap checks that keep the zoo's essentials true (STYLE.md, last section).

- a zoo file stands alone: module-level imports are torch and the standard library only;
- its card has the headings a reader looks for;
- every registered method has its four mirrored files;
- a fast file's public names exist in its zoo twin with the same signature;
- the code-line count of every zoo file is printed (a signal for review, not a gate).
"""

import ast
import inspect
import importlib
import io
import pathlib
import sys
import tokenize

import pytest

import zoo

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZOO_FILES = sorted(p for p in (ROOT / "zoo").glob("*.py") if not p.name.startswith("_"))
CARD_HEADINGS = ("Paper:", "Math", "Shapes:", "Cost:", "Forms:", "Fast:")
STDLIB = set(sys.stdlib_module_names)


def module_level_imports(tree: ast.Module):
    """Top-level package names imported at module level (not inside functions)."""
    for node in tree.body:
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield "." if node.level else node.module.split(".")[0]


def code_lines(path: pathlib.Path) -> int:
    """Lines holding code, not comments, blank lines or docstrings (tinygrad-style count)."""
    src = path.read_text()
    lines = set()
    prev = tokenize.INDENT
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.STRING and prev in (tokenize.INDENT, tokenize.NEWLINE, tokenize.DEDENT):
            prev = tok.type
            continue  # a docstring or a bare string statement
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER):
            lines.update(range(tok.start[0], tok.end[0] + 1))
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            prev = tok.type
    return len(lines)


@pytest.mark.parametrize("path", ZOO_FILES, ids=lambda p: p.stem)
def test_zoo_file_imports_only_torch_and_the_standard_library(path):
    tree = ast.parse(path.read_text())
    bad = [m for m in module_level_imports(tree) if m != "torch" and m not in STDLIB]
    assert not bad, f"{path.name} imports {bad}: a zoo file may import only torch and the standard library"


@pytest.mark.parametrize("path", ZOO_FILES, ids=lambda p: p.stem)
def test_zoo_file_opens_with_a_card(path):
    card = ast.get_docstring(ast.parse(path.read_text())) or ""
    missing = [h for h in CARD_HEADINGS if h not in card]
    assert not missing, f"{path.name}: the card docstring lacks {missing} (STYLE.md rule 1)"
    print(f"{path.name}: {len(path.read_text().splitlines())} lines, {code_lines(path)} code lines")


@pytest.mark.parametrize("name", sorted(zoo.METHODS))
def test_every_registered_method_has_its_four_mirrored_files(name):
    for twin in (f"zoo/{name}.py", f"fast/{name}.py", f"tests/test_{name}.py", f"notebooks/{name}.ipynb"):
        assert (ROOT / twin).exists(), f"method {name!r} is registered but {twin} is missing"
    assert name in zoo.LAYERS, f"method {name!r} has no layer in zoo.LAYERS"


@pytest.mark.parametrize("name", sorted(zoo.METHODS))
def test_fast_mirror_has_the_zoo_names_and_signatures(name):
    zoo_mod = zoo.METHODS[name]
    fast_mod = importlib.import_module(f"fast.{name}")
    public = getattr(fast_mod, "__all__", None)
    assert public, f"fast/{name}.py must list its public names in __all__"
    zoo_chunks = [n for n in getattr(zoo_mod, "__all__", dir(zoo_mod)) if n.endswith("_chunk")]
    assert not zoo_chunks or any(n in public for n in zoo_chunks), \
        f"fast/{name}.py covers none of the zoo's chunk forms {zoo_chunks}"
    for n in public:
        assert hasattr(zoo_mod, n), f"fast/{name}.py exposes {n!r}, which zoo/{name}.py lacks"
        f, z = getattr(fast_mod, n), getattr(zoo_mod, n)
        if inspect.isclass(z):
            assert issubclass(f, z), f"fast {n} must subclass the zoo layer so state dicts match"
        elif callable(z):
            assert inspect.signature(f) == inspect.signature(z), \
                f"{n}: fast signature {inspect.signature(f)} != zoo {inspect.signature(z)}"


FAST_FILES = sorted(p for p in (ROOT / "fast").glob("*.py") if not p.name.startswith("_"))


def _is_constexpr_call(node) -> bool:
    """`tl.constexpr(...)` / `triton.language.constexpr(...)`: the only globals a compiled kernel may read."""
    return (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "constexpr")


def _is_jit(fn: ast.FunctionDef) -> bool:
    for d in fn.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        if getattr(d, "attr", getattr(d, "id", None)) == "jit":
            return True
    return False


@pytest.mark.parametrize("path", FAST_FILES, ids=lambda p: p.stem)
def test_kernels_read_no_plain_globals(path):
    """Triton's interpreter lets a kernel read any module global; the GPU compiler accepts only
    globals made with `tl.constexpr(...)` and fails with NameError at the first launch. This
    difference cost a GPU run once: catch it here, on the CPU."""
    tree = ast.parse(path.read_text())
    plain = set()
    for node in tree.body:
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if value is not None and not _is_constexpr_call(value):
            plain |= {t.id for t in targets if isinstance(t, ast.Name)}
    bad = []
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and _is_jit(n)):
        local = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        local |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        bad += [f"{fn.name} reads {name}" for name in sorted((used & plain) - local)]
    assert not bad, (f"{path.name}: kernels read plain module globals, which compile only under the "
                     f"interpreter; make them `NAME = tl.constexpr(value)` or pass them in: {bad}")
