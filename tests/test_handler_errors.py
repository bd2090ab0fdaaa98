"""Mistakes in a handler, each with its one line: real modules written to a temporary directory.

Issue 12: a module that was found but failed to import was told to check the Python path; a
lambda was told to move to module level where it already was; a name typo got no suggestion.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TWISTD, child_env

from gaspar_tw.errors import HandlerError
from gaspar_tw.handler import check_import, handler_spec, load_handler

PATH_HINT = " (is it on the Python path? run from its directory or pass --pythonpath DIR)"

MISSING_DEPENDENCY = (
    "import os\n\nimport notinstalled\n\n\ndef work(message):\n    return message\n"
)
HANDLERS = (
    "lam = lambda message: message\n"
    "\n\n"
    "def work(message):\n"
    "    return message\n"
    "\n\n"
    "def outer():\n"
    "    def inner(message):\n"
    "        return message\n"
    "\n"
    "    return inner, lambda message: message\n"
    "\n\n"
    "class Greeter:\n"
    "    def greet(self, message):\n"
    "        return message\n"
)


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """write(name, source) puts a module in a directory that is importable and current (so
    its file is shown as name.py); sys.path, the directory and new modules are restored."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)

    def write(relative: str, source: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)

    yield write
    for name in set(sys.modules) - before:
        del sys.modules[name]


def message_of(spec: str) -> str:
    with pytest.raises(HandlerError) as raised:
        load_handler(spec)
    return str(raised.value)


# -- a module found, but its import fails: the error and where, no path hint --


def test_a_missing_dependency_inside_the_module_says_where(modules):
    modules("mymod.py", MISSING_DEPENDENCY)
    assert message_of("mymod:work") == (
        "importing module 'mymod' for handler 'mymod:work' failed:"
        " ModuleNotFoundError: No module named 'notinstalled' (mymod.py, line 3)"
    )


def test_an_error_in_a_module_it_imports_names_that_module(modules):
    modules("outer.py", "import helper\n\n\ndef work(message):\n    return message\n")
    modules("helper.py", "\nraise RuntimeError('no config file')\n")
    assert message_of("outer:work") == (
        "importing module 'outer' for handler 'outer:work' failed:"
        " RuntimeError: no config file (helper.py, line 2)"
    )


def test_an_error_of_several_lines_is_said_in_one(modules):
    modules("multi.py", "raise ValueError('bad setting\\n  in config.ini')\n")
    assert message_of("multi:work") == (
        "importing module 'multi' for handler 'multi:work' failed:"
        " ValueError: bad setting   in config.ini (multi.py, line 1)"
    )


def test_a_syntax_error_gives_its_file_and_line(modules):
    source = "x = 1\ndef work(message:\n    return message\n"
    with pytest.raises(SyntaxError) as compiled:
        compile(source, "broken.py", "exec")  # Python's own words for it, which vary by version
    modules("broken.py", source)
    assert message_of("broken:work") == (
        "importing module 'broken' for handler 'broken:work' failed:"
        f" SyntaxError: {compiled.value.msg} (broken.py, line 2)"
    )


def test_a_file_outside_the_current_directory_is_shown_in_full(modules, tmp_path, monkeypatch):
    modules("pkg/__init__.py", "")
    modules("pkg/handlers.py", MISSING_DEPENDENCY)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert message_of("pkg.handlers:work") == (
        "importing module 'pkg.handlers' for handler 'pkg.handlers:work' failed:"
        f" ModuleNotFoundError: No module named 'notinstalled' ({tmp_path}/pkg/handlers.py, line 3)"
    )


# -- the module (or its package) not found: the path hint --


@pytest.mark.parametrize(
    "spec, missing",
    [
        ("nosuchmod:work", "nosuchmod"),
        ("nosuchpkg.handlers:work", "nosuchpkg"),
        ("pkg.nosuchmod:work", "pkg.nosuchmod"),
    ],
)
def test_a_module_not_found_gets_the_path_hint(modules, spec, missing):
    modules("pkg/__init__.py", "")
    module = spec.partition(":")[0]
    assert message_of(spec) == (
        f"cannot import module {module!r} for handler {spec!r}: No module named {missing!r}"
        + PATH_HINT
    )


# -- a name that is not there --


def test_a_typo_in_the_name_gets_a_suggestion(modules):
    modules("mymod.py", HANDLERS)
    assert message_of("mymod:wrok") == (
        "module 'mymod' has no attribute 'wrok' (handler 'mymod:wrok'); did you mean 'work'?"
    )
    assert message_of("mymod:Greeter.greeet") == (
        "module 'mymod' has no attribute 'Greeter.greeet' (handler 'mymod:Greeter.greeet');"
        " did you mean 'Greeter.greet'?"
    )


def test_a_name_like_nothing_there_gets_no_suggestion(modules):
    modules("mymod.py", HANDLERS)
    assert message_of("mymod:zzzzzz") == (
        "module 'mymod' has no attribute 'zzzzzz' (handler 'mymod:zzzzzz')"
    )


# -- a function given to Consumer that workers could not import --


def test_a_module_level_lambda_is_told_the_name_that_works(modules):
    modules("mymod.py", HANDLERS)
    import mymod

    with pytest.raises(ValueError) as raised:
        handler_spec(mymod.lam)
    assert str(raised.value) == (
        "handler 'mymod:<lambda>' is a lambda, which worker processes cannot import; name it"
        " with def at module level (a lambda cannot be imported by name), or pass the name it"
        " is bound to as a string: 'mymod:lam'"
    )
    assert load_handler("mymod:lam") is mymod.lam  # what the message offers does work


def test_a_nested_lambda_and_a_nested_function_are_told_to_move(modules):
    modules("mymod.py", HANDLERS)
    import mymod

    inner, nestedLambda = mymod.outer()
    with pytest.raises(ValueError) as raised:
        handler_spec(nestedLambda)
    assert str(raised.value) == (
        "handler 'mymod:outer.<locals>.<lambda>' is a lambda, which worker processes cannot"
        " import; name it with def at module level (a lambda cannot be imported by name)"
    )
    with pytest.raises(ValueError) as raised:
        handler_spec(inner)
    assert str(raised.value) == (
        "handler 'mymod:outer.<locals>.inner' is a nested function, which worker processes"
        " cannot import; move it to module level"
    )


def test_a_method_bound_to_an_instance_is_refused(modules):
    # Its name, 'mymod:Greeter.greet', would give workers the function without its instance.
    modules("mymod.py", HANDLERS)
    import mymod

    with pytest.raises(ValueError) as raised:
        handler_spec(mymod.Greeter().greet)
    assert str(raised.value) == (
        "handler 'mymod:Greeter.greet' is a method bound to an instance, which worker processes"
        " cannot import; make it a module-level function (or a staticmethod) and pass that"
    )


def test_a_function_or_lambda_in_main_is_told_to_move_with_a_real_name():
    def work(message):
        return message

    lam = lambda message: message  # noqa: E731 - the mistake under test
    work.__module__ = lam.__module__ = "__main__"
    work.__qualname__, lam.__qualname__ = "work", "<lambda>"  # as at a script's top level
    with pytest.raises(ValueError) as raised:
        handler_spec(work)
    assert str(raised.value) == (
        "handler 'work' is defined in __main__, which worker processes cannot import;"
        " move it to the top level of a module (e.g. myhandlers.py) and pass 'myhandlers:work'"
    )
    with pytest.raises(ValueError) as raised:
        handler_spec(lam)
    assert str(raised.value) == (
        "handler '<lambda>' is defined in __main__, which worker processes cannot import; define it"
        " with def in a module (e.g. def work(message) in myhandlers.py) and pass"
        " 'myhandlers:work' (a lambda cannot be imported by name)"
    )


# -- check_import: the same words from a child process, and its own --


def test_the_import_check_gives_the_child_s_one_line(modules, tmp_path):
    modules("mymod.py", MISSING_DEPENDENCY)
    with pytest.raises(HandlerError) as raised:
        check_import("mymod:work", [str(tmp_path)], timeout=10)
    assert str(raised.value) == (
        "importing module 'mymod' for handler 'mymod:work' failed:"
        " ModuleNotFoundError: No module named 'notinstalled' (mymod.py, line 3)"
    )


@pytest.mark.parametrize(
    "source, ending",
    [
        (
            "import os, sys\nsys.stderr.write('no licence key\\n')\nsys.stderr.flush()\n"
            "os._exit(7)\n",
            "exit status 7): no licence key",
        ),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed by SIGKILL)"),
    ],
)
def test_a_module_that_ends_the_import_check_says_how(modules, tmp_path, source, ending):
    modules("quits.py", source)
    with pytest.raises(HandlerError) as raised:
        check_import("quits:work", [str(tmp_path)], timeout=10)
    assert str(raised.value) == "importing handler 'quits:work' ended its process (" + ending


def test_a_module_that_hangs_at_import_is_out_of_time(modules, tmp_path):
    modules("hangs.py", "import time\nwhile True:\n    time.sleep(0.05)\n")
    with pytest.raises(HandlerError) as raised:
        check_import("hangs:work", [str(tmp_path)], timeout=0.5)
    assert str(raised.value) == (
        "importing handler 'hangs:work' took over 0.5s (does the module loop at import?"
        " --import-timeout sets the limit)"
    )


# -- the daemon: one line, exit status 1 --


def test_twistd_gaspar_with_a_missing_dependency_in_the_handler(tmp_path):
    (tmp_path / "mymod.py").write_text(MISSING_DEPENDENCY)
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "gaspar", "--handler", "mymod:work"]
        + ["--endpoint", "tcp:0:interface=127.0.0.1"],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
        env=child_env(),
    )
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        "twistd gaspar: importing module 'mymod' for handler 'mymod:work' failed:"
        " ModuleNotFoundError: No module named 'notinstalled' (mymod.py, line 3)"
    ]
    assert b"listening" not in result.stdout
