"""The import-graph check (tools/check_imports.py): the real package is clean, and the check can fail.

The fake packages prove each rule bites (and each exemption holds), so a clean result on mergebench/
means something.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_imports.py"


def load_tool() -> ModuleType:
    """tools/ is not a package, so load the script from its path (registered so dataclasses resolve)."""
    if "check_imports" in sys.modules:
        return sys.modules["check_imports"]
    spec = importlib.util.spec_from_file_location("check_imports", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module
    spec.loader.exec_module(module)
    return module


check_imports = load_tool()


def make_package(root: Path, files: dict[str, str], name: str = "pkg") -> Path:
    """Write ``files`` (paths relative to the package dir) under ``root/name``; ``__init__.py`` by default."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for rel, source in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return package


def violations(package: Path) -> list[str]:
    return check_imports.check_package(package).violations


def edges(package: Path) -> set[tuple[str, str]]:
    report = check_imports.check_package(package)
    return {(imp.source, imp.target) for imp in report.imports if imp.target in report.modules}


def test_mergebench_has_no_cycles_and_core_never_imports_lora() -> None:
    report = check_imports.check_package(check_imports.DEFAULT_PACKAGE_DIR)
    assert "mergebench.cli" in report.modules and "mergebench.lora" in report.modules
    assert report.violations == [], "\n".join(report.violations)


def test_module_level_cycle(tmp_path: Path) -> None:
    package = make_package(tmp_path, {"a.py": "import pkg.b\n", "b.py": "\nfrom pkg import a\n"})
    assert violations(package) == ["cycle: pkg.a -> pkg.b -> pkg.a (pkg/a.py:1; pkg/b.py:2)"]


def test_cycle_dodged_by_function_level_import_is_still_a_cycle(tmp_path: Path) -> None:
    files = {
        "a.py": "from pkg.b import helper\n",
        "b.py": """\
            def helper():
                from pkg.a import thing

                return thing
            """,
    }
    assert violations(make_package(tmp_path, files)) == [
        "cycle: pkg.a -> pkg.b -> pkg.a (pkg/a.py:1; pkg/b.py:2)"
    ]


@pytest.mark.parametrize(
    "guard",
    ["from typing import TYPE_CHECKING\nif TYPE_CHECKING:", "import typing\nif typing.TYPE_CHECKING:"],
)
def test_type_checking_import_is_not_a_cycle(tmp_path: Path, guard: str) -> None:
    files = {"a.py": "from pkg.b import B\n", "b.py": f"{guard}\n    from pkg.a import A\nB = 1\n"}
    package = make_package(tmp_path, files)
    assert violations(package) == []
    assert edges(package) == {("pkg.a", "pkg.b")}


def test_else_branch_of_type_checking_does_run(tmp_path: Path) -> None:
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n    from pkg import a\n"
    package = make_package(tmp_path, {"a.py": "from pkg.b import B\n", "b.py": guarded})
    assert violations(package) == ["cycle: pkg.a -> pkg.b -> pkg.a (pkg/a.py:1; pkg/b.py:5)"]


def test_relative_import_cycle(tmp_path: Path) -> None:
    files = {
        "sub/__init__.py": "",
        "sub/x.py": "from .y import f\n",
        "sub/y.py": "from . import x\n\ndef f():\n    pass\n",
    }
    assert violations(make_package(tmp_path, files)) == [
        "cycle: pkg.sub.x -> pkg.sub.y -> pkg.sub.x (pkg/sub/x.py:1; pkg/sub/y.py:1)"
    ]


def test_relative_import_across_levels_and_from_a_package_init(tmp_path: Path) -> None:
    files = {
        "top.py": "from pkg.sub import deep\n",
        "sub/__init__.py": "from .deep import f\n",
        "sub/deep.py": "from .. import top\n\ndef f():\n    pass\n",
    }
    package = make_package(tmp_path, files)
    assert edges(package) == {
        ("pkg.top", "pkg.sub.deep"),
        ("pkg.sub", "pkg.sub.deep"),
        ("pkg.sub.deep", "pkg.top"),
    }
    assert violations(package) == [
        "cycle: pkg.sub.deep -> pkg.top -> pkg.sub.deep (pkg/sub/deep.py:1; pkg/top.py:1)"
    ]


def test_core_module_importing_lora_is_a_violation_but_cli_may(tmp_path: Path) -> None:
    files = {
        "core.py": "def run():\n    from pkg.lora.x import thing\n",
        "cli.py": "from pkg.lora import x\nimport pkg.lora\n",
        "lora/__init__.py": "",
        "lora/x.py": "from pkg.core import run\nthing = run\n",
    }
    found = violations(make_package(tmp_path, files))
    assert found == [
        "cycle: pkg.core -> pkg.lora.x -> pkg.core (pkg/core.py:2; pkg/lora/x.py:1)",
        "layering: pkg.core imports pkg.lora.x (pkg/core.py:2): only pkg.lora.* and pkg.cli may import pkg.lora",
    ]


def test_core_importing_the_lora_package_itself_is_a_violation(tmp_path: Path) -> None:
    files = {"util.py": "from pkg import lora\n", "lora/__init__.py": ""}
    found = violations(make_package(tmp_path, files))
    assert len(found) == 1 and found[0].startswith("layering: pkg.util imports pkg.lora (pkg/util.py:1)")


def test_from_package_import_name_resolves_to_the_submodule(tmp_path: Path) -> None:
    files = {
        "sub.py": "VALUE = 1\n",
        "plain.py": "from pkg import sub\nfrom pkg import VERSION\n",
        "a.py": "from pkg import b\n",
        "b.py": "from pkg import a\n",
    }
    package = make_package(tmp_path, files)
    (package / "__init__.py").write_text("VERSION = '1'\n")
    assert {("pkg.plain", "pkg.sub"), ("pkg.plain", "pkg")} <= edges(package)
    # Only submodule resolution makes this a cycle (resolved to pkg it would be a -> pkg <- b).
    assert violations(package) == ["cycle: pkg.a -> pkg.b -> pkg.a (pkg/a.py:1; pkg/b.py:1)"]


def test_implicit_parent_package_load_is_not_a_cycle(tmp_path: Path) -> None:
    files = {
        "__init__.py": "from pkg.a.one import f\n",
        "a/__init__.py": "",
        "a/one.py": "from pkg.a.two import g\n\ndef f():\n    pass\n",
        "a/two.py": "def g():\n    pass\n",
    }
    package = make_package(tmp_path, files)
    assert violations(package) == []
    assert edges(package) == {("pkg", "pkg.a.one"), ("pkg.a.one", "pkg.a.two")}


def test_namespace_subpackage_without_init(tmp_path: Path) -> None:
    files = {"io/w.py": "from pkg.io import r\n", "io/r.py": "from pkg.io import w\n"}
    package = make_package(tmp_path, files)
    assert violations(package) == ["cycle: pkg.io.r -> pkg.io.w -> pkg.io.r (pkg/io/r.py:1; pkg/io/w.py:1)"]


def test_self_import_is_a_cycle(tmp_path: Path) -> None:
    package = make_package(tmp_path, {"a.py": "def f():\n    from pkg.a import g\n"})
    assert violations(package) == ["cycle: pkg.a -> pkg.a (pkg/a.py:2)"]


def test_package_name_comes_from_the_directory(tmp_path: Path) -> None:
    files = {"core.py": "import other.lora.x\n", "lora/__init__.py": "", "lora/x.py": ""}
    package = make_package(tmp_path, files, name="other")
    assert violations(package)[0].startswith("layering: other.core imports other.lora.x")


def test_main_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = make_package(tmp_path / "clean", {"a.py": "from pkg import b\n", "b.py": ""})
    assert check_imports.main([str(clean)]) == 0
    assert capsys.readouterr().out == "ok: 3 modules, 1 imports, no cycles, layering respected\n"

    broken = make_package(tmp_path / "broken", {"a.py": "import pkg.b\n", "b.py": "import pkg.a\n"})
    assert check_imports.main([str(broken)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["cycle: pkg.a -> pkg.b -> pkg.a (pkg/a.py:1; pkg/b.py:1)", "1 violation(s) in pkg"]
