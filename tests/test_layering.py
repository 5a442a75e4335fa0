"""The import rules of design.md: the core never imports frontends or backends (they are found by name), and no
backend imports the passes or the pipeline (the memory planner is a library, `cnncomp.planner`)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = (
    "import sys, {module}; "
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('frontends', 'backends') or "
    "m.startswith('cnncomp.passes')); "
    "print(','.join(bad)); sys.exit(1 if bad else 0)"
)


@pytest.mark.parametrize("module", ["cnncomp.ir", "cnncomp.ops", "cnncomp.summary", "cnncomp.cli",
                                    "cnncomp.driver", "cnncomp.batch"])
def test_core_imports_no_frontend_backend_or_pass(module):
    result = subprocess.run([sys.executable, "-c", CHECK.format(module=module)], capture_output=True, text=True)
    assert result.returncode == 0, f"{module} imported {result.stdout.strip()} {result.stderr}"


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every module each file under `package` imports, at the top or inside a function: {file: modules}."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        found[str(path.relative_to(ROOT))] = names
    return found


def test_no_backend_imports_the_passes_or_the_pipeline():
    bad = {path: sorted(name for name in names if name.startswith(("cnncomp.passes", "cnncomp.pipeline")))
           for path, names in imported_modules("backends").items()}
    assert {path: names for path, names in bad.items() if names} == {}


def test_no_backend_imports_a_frontend():
    """The onnxruntime backend reaches the ONNX exporter through the plugin registry."""
    bad = {path: sorted(name for name in names if name.split(".")[0] == "frontends")
           for path, names in imported_modules("backends").items()}
    assert {path: names for path, names in bad.items() if names} == {}


def test_no_core_module_imports_a_backend_or_a_frontend():
    bad = {path: sorted(name for name in names if name.split(".")[0] in ("backends", "frontends"))
           for path, names in imported_modules("cnncomp").items()}
    assert {path: names for path, names in bad.items() if names} == {}


def test_backends_and_frontends_are_found_by_entry_point():
    from cnncomp import plugins

    assert "reference" in plugins.available(plugins.BACKENDS)
    assert "py" in plugins.available(plugins.FRONTENDS)
    assert hasattr(plugins.backend("reference"), "compile")
    assert hasattr(plugins.frontend("py"), "load")
    assert hasattr(plugins.exporter("onnx"), "export")


def test_unknown_backend_is_a_clear_error():
    from cnncomp import plugins
    from cnncomp.errors import CnnCompError

    with pytest.raises(CnnCompError, match="unknown backend 'tpu'; available: .*reference"):
        plugins.backend("tpu")
