"""Handler specifications: what loads, and the errors that say what to fix."""

import pytest

import gaspar_tw
from gaspar_tw.errors import HandlerError
from gaspar_tw.examples import echo
from gaspar_tw.handler import handler_spec, load_handler


def test_load_handler_imports_module_function():
    assert load_handler("gaspar_tw.examples:echo") is echo


@pytest.mark.parametrize(
    "spec, words",
    [
        ("gaspar_tw.examples", "must look like 'module:function'"),
        (":echo", "must look like"),
        ("no_such_mod_xyz:f", "cannot import module 'no_such_mod_xyz'"),
        ("gaspar_tw.examples:nothing", "has no attribute 'nothing'"),
        ("gaspar_tw.worker:EXIT_HANDLER_ERROR", "not a callable"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, words):
    with pytest.raises(HandlerError, match=words):
        load_handler(spec)


def test_consumer_accepts_a_function_or_its_name():
    assert gaspar_tw.Consumer(handler=echo).spec == "gaspar_tw.examples:echo"
    assert gaspar_tw.Consumer("gaspar_tw.examples:echo").handler is echo


def test_lambda_and_nested_functions_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="define it at module level"):
        gaspar_tw.Consumer(handler=lambda m: m)

    def nested(m):
        return m

    with pytest.raises(ValueError, match="module level"):
        handler_spec(nested)


def test_handler_in_main_is_refused_with_the_fix():
    def fake(m):
        return m

    fake.__module__ = "__main__"
    with pytest.raises(ValueError, match="move it into a module"):
        gaspar_tw.Consumer(handler=fake)
