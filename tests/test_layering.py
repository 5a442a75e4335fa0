"""The import rules of design.md: the core never imports frontends or backends (they are found by name)."""

import subprocess
import sys

import pytest

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


def test_backends_and_frontends_are_found_by_entry_point():
    from cnncomp import plugins

    assert "reference" in plugins.available(plugins.BACKENDS)
    assert "py" in plugins.available(plugins.FRONTENDS)
    assert hasattr(plugins.backend("reference"), "compile")
    assert hasattr(plugins.frontend("py"), "load")


def test_unknown_backend_is_a_clear_error():
    from cnncomp import plugins
    from cnncomp.errors import CnnCompError

    with pytest.raises(CnnCompError, match="unknown backend 'tpu'; available: .*reference"):
        plugins.backend("tpu")
