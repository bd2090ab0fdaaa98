"""Handler specifications: what loads, and the errors that say what to fix."""

import time

import pytest
from conftest import assert_reaped

import gaspar_tw
from gaspar_tw.errors import HandlerError
from gaspar_tw.examples import echo
from gaspar_tw.handler import check_import, handler_spec, load_handler


def test_load_handler_imports_module_function():
    assert load_handler("gaspar_tw.examples:echo") is echo


@pytest.mark.parametrize(
    "spec, words",
    [
        ("gaspar_tw.examples", "must look like 'module:function'"),
        (":echo", "must look like"),
        ("no_such_mod_xyz:f", "cannot import module 'no_such_mod_xyz'"),
        ("gaspar_tw.examples:nothing", "has no attribute 'nothing'"),
        (
            "gaspar_tw.wire.control:EXIT_HANDLER_ERROR",
            r"^handler '\S+:EXIT_HANDLER_ERROR' is an int \(4\), not a function:",
        ),
        ("gaspar_tw.config:DEFAULT_PORT", r"is an int \(10123\), not a function"),
        ("gaspar_tw.wire.control:PING", r"^handler 'gaspar_tw.wire.control:PING' is a bytes \(b"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, words):
    with pytest.raises(HandlerError, match=words):
        load_handler(spec)


def test_consumer_accepts_a_function_or_its_name():
    assert gaspar_tw.Consumer(handler=echo).spec == "gaspar_tw.examples:echo"
    assert gaspar_tw.Consumer("gaspar_tw.examples:echo").handler is echo


def test_lambda_and_nested_functions_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="name it with def at module level"):
        gaspar_tw.Consumer(handler=lambda m: m)

    def nested(m):
        return m

    with pytest.raises(ValueError, match="module level"):
        handler_spec(nested)


def test_handler_in_main_is_refused_with_the_fix():
    def fake(m):
        return m

    fake.__module__ = "__main__"
    with pytest.raises(ValueError, match="move it to the top level of a module"):
        gaspar_tw.Consumer(handler=fake)


def test_import_check_does_not_wait_for_a_process_the_module_starts(tmp_path):
    # The helper inherits the check's stderr: waiting for that to close waited out the timeout.
    pidfile = tmp_path / "helper.pid"
    (tmp_path / "starts_helper.py").write_text(
        "import subprocess, sys\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(helper.pid))\n"
        "def work(message):\n"
        "    return message\n"
    )
    started = time.monotonic()
    check_import("starts_helper:work", [str(tmp_path)], timeout=10)
    assert time.monotonic() - started < 5
    assert_reaped([int(pidfile.read_text())], timeout=5)  # the check leaves nothing behind
