"""The modules import each other in one direction only: no import circle, also none hidden inside a
function (as Colorizer.load once imported colorize_base for its defaults)."""
import ast
import glob
import os

from conftest import REPO

MODULES = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(REPO, "*.py"))}


def imports_of(name):
    tree = ast.parse(open(os.path.join(REPO, name + ".py"), encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):  # every import, at the top or inside a function
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & MODULES - {name}


def test_no_import_circle():
    graph = {m: imports_of(m) for m in MODULES}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import circle: " + " -> ".join(path + [m])
        state[m] = "open"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"
    for m in sorted(graph):
        visit(m, [])


def test_the_libraries_do_not_import_the_command_line():
    """colorize_base is the command line: the modules it is built from never import it."""
    for m in ("checkpoint", "colorizer", "data", "evaluate", "files", "hints", "losses", "metrics", "models",
              "runtime", "training", "webapp"):
        assert "colorize_base" not in imports_of(m), m
