"""Calls at their edges: where workers find functions, what the caller refuses at once,
a map within max_pending and max_call_bytes, and iterables that fail."""

from __future__ import annotations

import functools
import json
import pickle
import re
import subprocess
import sys
import textwrap
import types

import call_targets as targets
import edge_targets as edges
import pytest
import pytest_twisted
from conftest import ROOT
from pools import running_pool
from twisted.internet import reactor

from gaspar_tw import Overloaded
from gaspar_tw.calls.mapping import ChunkSizes
from gaspar_tw.wire.calls import load_arguments, pack_call

WAIT = 20
LIMIT = 1_000_000  # the pool's max_call_bytes


@pytest_twisted.async_yield_fixture(scope="module")
async def pool():
    async with running_pool(workers=2, max_pending=4, max_call_bytes=LIMIT, timeout=20) as pool:
        yield pool


async def failure_of(d, kind):
    """The exception C{d} fails with (of type C{kind}), its message one line."""
    with pytest.raises(kind) as info:
        await d.addTimeout(WAIT, reactor)
    assert "\n" not in str(info.value)
    return info.value


# -- 1. where workers find a call's function ------------------------------------------------


def test_workers_find_the_scripts_modules_after_the_handlers_root(tmp_path):
    """A pool with a handler: its workers have the handler's import root, then the script's
    directory, on their path, each once."""
    app, lib = tmp_path / "app", tmp_path / "lib"
    app.mkdir()
    lib.mkdir()
    (lib / "handlers.py").write_text("def echo(data):\n    return data\n")
    (app / "tasks.py").write_text("import sys\n\ndef path():\n    return sys.path\n")
    (app / "main.py").write_text(
        textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(lib)!r})
            import tasks
            from twisted.internet import task
            from gaspar_tw import ProcessPool

            async def main(reactor):
                pool = ProcessPool("handlers:echo", workers=1, pythonpath=[{str(app)!r}])
                pool.startService()
                try:
                    print(json.dumps(await pool.call(tasks.path)))
                finally:
                    await pool.stopService()

            task.react(lambda reactor: __import__("twisted").internet.defer.ensureDeferred(
                main(reactor)))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(app / "main.py")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr[-800:]
    path = json.loads(done.stdout)
    assert path.count(str(app)) == 1  # given as pythonpath and the script's: once
    assert path.index(str(app)) < path.index(str(lib))  # pythonpath first, as configured

    # Without pythonpath: the handler's root first, then the script's directory.
    source = (app / "main.py").read_text().replace(f", pythonpath=[{str(app)!r}]", "")
    (app / "main.py").write_text(source)
    done = subprocess.run(
        [sys.executable, str(app / "main.py")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr[-800:]
    path = json.loads(done.stdout)
    assert path.count(str(app)) == 1 and path.index(str(lib)) < path.index(str(app))


@pytest_twisted.ensureDeferred
async def test_a_function_the_workers_cannot_import_says_so_with_the_fix(pool, tmp_path):
    (tmp_path / "beside_caller.py").write_text("def double(x):\n    return 2 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import beside_caller
    finally:
        sys.path.remove(str(tmp_path))
    try:
        for d in (pool.call(beside_caller.double, 2), pool.map(beside_caller.double, [1, 2])):
            error = await failure_of(d, ModuleNotFoundError)
            assert str(error).startswith(
                "cannot import beside_caller.double in a worker: no module named 'beside_caller';"
                " is beside_caller importable by the workers? pass pythonpath=["
            ), str(error)
        # A module the workers import, without the function the caller added to it.
        edges.added_here = added_here
        error = await failure_of(pool.call(added_here, 2), AttributeError)
        assert "cannot import edge_targets.added_here in a worker" in str(error)
        assert "pass pythonpath=[" in str(error)
    finally:
        del sys.modules["beside_caller"]
        edges.__dict__.pop("added_here", None)
    assert await pool.call(abs, -2) == 2


def test_arguments_a_worker_cannot_import_say_so_with_the_fix(monkeypatch):
    """L{load_arguments}, as a worker reads a call's arguments."""
    module = types.ModuleType("vanishing_models")

    class Thing:
        pass

    Thing.__module__, Thing.__qualname__ = "vanishing_models", "Thing"
    module.Thing = Thing
    monkeypatch.setitem(sys.modules, "vanishing_models", module)
    call = pack_call(targets.identity, (Thing(),), {})
    monkeypatch.delitem(sys.modules, "vanishing_models")
    with pytest.raises(ModuleNotFoundError) as info:
        load_arguments(targets.identity, call.frames)
    assert str(info.value) == (
        "cannot import an argument of call_targets.identity in a worker: no module named"
        " 'vanishing_models'; is vanishing_models importable by the workers? pass"
        " pythonpath=[its directory] to the pool (--pythonpath), or install it"
    )
    assert load_arguments(targets.identity, pack_call(abs, (1,), {"a": 2}).frames) == (
        (1,),
        {"a": 2},
    )


def added_here(x):
    """Stands for a function the caller added to a module the workers import as it was."""
    return 3 * x


added_here.__module__ = "edge_targets"


# -- 2. a map within max_pending ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_map_refills_as_room_comes_and_fails_only_with_none_of_its_own(pool):
    assert await pool.map(abs, range(-60, 0), chunksize=1).addTimeout(WAIT, reactor) == list(
        range(60, 0, -1)
    )
    held = [pool.call(edges.path) for _ in range(3)] + [pool.call(targets.identity, 0)]
    held.append(pool.map(abs, [1, 2]))  # the table is full and none of its chunks in flight
    await failure_of(held[-1], Overloaded)
    for d in held[:-1]:
        await d
    assert await pool.map(abs, range(-9, 0)).addTimeout(WAIT, reactor) == list(range(9, 0, -1))


# -- 3. objects of __main__ as arguments ------------------------------------------------------


class Local:
    """Stands for a class the caller's script defines (its __module__ made __main__)."""


Local.__module__ = "__main__"


def main(x):
    """Stands for the script's own main(): in a worker, that name is the worker's main()."""
    return x


main.__module__ = "__main__"


@pytest_twisted.ensureDeferred
async def test_objects_of_main_as_arguments_are_refused_in_the_caller(pool, monkeypatch):
    script = sys.modules["__main__"]
    monkeypatch.setattr(script, "Local", Local, raising=False)
    monkeypatch.setattr(script, "main", main, raising=False)
    why = "a worker does not run your __main__ script, so cannot import what it defines"
    cases = [
        (pool.call(targets.identity, Local()), "__main__.Local"),
        (pool.call(targets.identity, main), "__main__.main"),
        (pool.call(targets.echo, 1, key={"deep": [Local]}), "__main__.Local"),
        (pool.call(functools.partial(targets.identity, Local())), "__main__.Local"),
    ]
    for d, name in cases:
        assert d.called  # at once, in the caller
        error = await failure_of(d, ValueError)
        assert str(error).startswith(f"cannot send {name} (or an instance of it) to a worker")
        assert why in str(error) and "define it at the top level" in str(error)
    d = pool.map(targets.identity, [1, 2, Local()], chunksize=10)
    error = await failure_of(d, ValueError)
    assert error.map_index == 2 and "as item 2 of the map of call_targets.identity" in str(error)
    # The name alone, in data, is no object of __main__.
    assert await pool.call(targets.identity, "__main__") == "__main__"


# -- 4. async functions ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_async_functions_are_refused_in_the_caller(pool):
    for d in (
        pool.call(edges.coroutine, 1),
        pool.call(functools.partial(edges.async_generator, 1)),
        pool.map(edges.coroutine, [1]),
    ):
        assert d.called
        error = await failure_of(d, ValueError)
        assert "it is an async function, and a worker runs plain functions" in str(error)
        assert "await it in your own code" in str(error)


# -- 5. a map within max_call_bytes ------------------------------------------------------------


def test_automatic_chunks_are_sized_by_the_bytes_of_their_results():
    sizes = ChunkSizes(None, LIMIT)
    sizes.timed(1, 1e-6)  # fast: by time, a chunk could take a thousand items
    sizes.measured("items", 1, 20)
    sizes.measured("results", 1, 100_000)
    assert sizes.next() * 100_000 <= LIMIT / 4
    assert ChunkSizes(7, LIMIT).next() == 7  # a chunksize given is kept


@pytest_twisted.ensureDeferred
async def test_a_map_of_large_results_fits_its_chunks_under_max_call_bytes(pool):
    results = await pool.map(edges.kilobytes, [100] * 40).addTimeout(WAIT, reactor)
    assert len(results) == 40 and all(len(r) == 100 * 1024 for r in results)

    error = await failure_of(pool.map(edges.kilobytes, [100] * 40, chunksize=20), ValueError)
    # Both chunks are too large; either worker may answer first.
    assert re.match(
        r"the result of items (0 to 19|20 to 39) of the map of edge_targets\.kilobytes", str(error)
    )
    assert "more than max_call_bytes" in str(error) and "chunksize" in str(error)
    assert not hasattr(error, "map_index") and "run_chunk" not in str(error)

    error = await failure_of(pool.map(edges.kilobytes, [1, 1, 1, 2000], chunksize=1), ValueError)
    assert str(error).startswith("the result of item 3 of the map of edge_targets.kilobytes")
    assert error.map_index == 3

    error = await failure_of(pool.map(edges.lock_at, range(6), chunksize=6), pickle.PicklingError)
    assert str(error).startswith(
        "cannot send the result of item 3 of the map of edge_targets.lock_at back"
    )
    assert error.map_index == 3
    assert await pool.map(edges.lock_at, range(3)).addTimeout(WAIT, reactor) == [0, 1, 2]


# -- 6. iterables that fail ------------------------------------------------------------------


class IterFails:
    def __iter__(self):
        raise RuntimeError("this iterable cannot be read now")


def test_an_iterable_that_fails_fails_the_deferred(pool):
    d = pool.map(abs, IterFails())  # no raise here
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(RuntimeError)
    assert "cannot be read now" in str(failures[0].value)

    d = pool.map(abs, 5)
    d.addErrback(failures.append)
    error = failures[-1].value
    assert isinstance(error, TypeError) and "\n" not in str(error)
    assert str(error) == (
        "map() needs an iterable of items (a list, a range, a generator...); got 5 (of type"
        " int), which is not iterable"
    )
