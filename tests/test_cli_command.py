"""Every subcommand imports torch with the collector paused and then freezes it
(cli_command); help stays free of torch. Each case runs in a fresh interpreter: the freeze is once
per process, and this test process has long imported torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import gc, json, sys
at_start = gc.get_freeze_count()  # Python 3.12 starts with a few hundred objects there
from mergebench.cli import main
sys.argv = ["mergebench", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
frozen = gc.get_freeze_count() - at_start
state = {"torch": "torch" in sys.modules, "frozen": frozen, "enabled": gc.isenabled()}
print("STATE " + json.dumps(state))
"""


def cli_state(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("STATE ")]
    assert lines, done.stdout + done.stderr
    return json.loads(lines[-1].removeprefix("STATE "))


def test_a_command_freezes_its_imports_and_leaves_the_collector_on() -> None:
    state = cli_state("methods")
    assert state["torch"] and state["enabled"]
    assert state["frozen"] > 50_000  # torch's objects, out of the collector's generations


@pytest.mark.parametrize(
    "args",
    [("--help",), ("merge", "--help"), ("lora", "merge", "--help"), ("lora", "merge", "--no-such-flag")],
)
def test_help_and_usage_errors_import_no_torch(args: tuple[str, ...]) -> None:
    """Parsed (and refused, or answered) before the command's import would run."""
    state = cli_state(*args)
    assert not state["torch"] and state["frozen"] == 0 and state["enabled"]


EXIT_PROBE = """
import atexit, sys
from mergebench.cli import run
atexit.register(lambda: print("exit handler ran"))  # buffered: only a flush after it gets it out
sys.argv = ["mergebench", *sys.argv[1:]]
run()
print("run() returned")
"""


def test_the_program_exits_with_its_status_after_the_exit_handlers_and_their_output(tmp_path) -> None:
    """``mergebench`` ends in ``os._exit`` (``cli.run``): the status must still be the command's, exit
    handlers must still run, and what they print must still be flushed."""
    from mergebench.errors import ConfigError

    missing = tmp_path / "missing.yaml"
    cases = [(("methods",), 0, ""), (("validate", str(missing)), ConfigError.exit_code, f"error: {missing}:")]
    for args, status, error in cases:
        done = subprocess.run(
            [sys.executable, "-c", EXIT_PROBE, *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == status, done.stderr
        assert done.stdout.endswith("exit handler ran\n"), done.stdout[-200:]
        assert "run() returned" not in done.stdout
        assert done.stderr.startswith(error) and done.stderr.count("\n") == bool(error), done.stderr
    assert done.stdout == "exit handler ran\n"
