"""Fuzzing the command line: malformed option values give one `error:` line and a non-zero exit,
never a traceback. Only values that cannot start real work are drawn (a bad name or number)."""

from __future__ import annotations

import contextlib
import io

from hypothesis import given, settings
from hypothesis import strategies as st

import run

NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12).filter(
    lambda text: not text.startswith("-")  # argparse would read it as an option
)
BAD_NUMBERS = st.one_of(st.integers(-10**6, 0).map(str), st.sampled_from(["1.5", "ten", "", "1e3", "0x10", "-0"]))
ARGV = st.one_of(
    NAMES.map(lambda name: ["train", "--scenario", f"no-such-{name}"]),
    NAMES.map(lambda name: ["evaluate", "--run", f"no-such-{name}"]),
    NAMES.map(lambda name: ["preview", "--scenario", f"no-such-{name}", "--out", "x.gif"]),
    NAMES.map(lambda name: ["train", "--algo", f"x{name}"]),
    NAMES.map(lambda name: ["train", "--device", f"x{name}"]),
    NAMES.map(lambda name: ["train", "--config", f"/no/such/{name}.yaml"]),
    BAD_NUMBERS.map(lambda value: ["train", "--timesteps", value]),
    BAD_NUMBERS.map(lambda value: ["train", "--n-envs", value]),
    BAD_NUMBERS.map(lambda value: ["evaluate", "--run", "r", "--episodes", value]),
    BAD_NUMBERS.map(lambda value: ["preview", "--steps", value]),
    BAD_NUMBERS.map(lambda value: ["evaluate", "--run", "r", "--attack", "pgd", "--steps", value]),
    BAD_NUMBERS.map(lambda value: ["evaluate", "--run", "r", "--attack", "pgd", "--eps", value]),
    NAMES.map(lambda name: ["evaluate", "--run", "r", "--attack", f"x{name}"]),
    NAMES.map(lambda name: ["evaluate", "--run", "r", "--corruption", f"x{name}"]),
)


@settings(max_examples=80, deadline=None)
@given(argv=ARGV)
def test_a_bad_option_value_gives_one_error_line(argv, tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("runs"))
    if argv[0] in ("train", "evaluate"):
        argv = [*argv, "--logdir", logdir]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = run.main(argv)
        except SystemExit as exit_info:  # argparse's own errors
            code = exit_info.code
    text = stderr.getvalue()
    assert code == 2, (argv, text)
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1, (argv, text)
