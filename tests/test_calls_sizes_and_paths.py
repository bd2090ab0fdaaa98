"""Calls at their sizes and paths: automatic map chunks and max_call_bytes, and workers
importing the caller's modules (not a namesake first on their path)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
import size_targets as targets
from conftest import ROOT, TESTS
from pools import running_pool
from twisted.internet import reactor

WAIT = 30
LIMIT = 1_000_000


@pytest_twisted.async_yield_fixture
async def pool():
    async with running_pool(workers=2, max_call_bytes=LIMIT, timeout=20) as pool:
        yield pool


@pytest_twisted.ensureDeferred
async def test_automatic_chunks_keep_items_that_grow_under_max_call_bytes(pool):
    """Each item fits max_call_bytes alone: with chunksize=None the map must not fail
    because the automatic chunk it chose holds too many of them."""
    items = [b"x"] * 2000 + [b"y" * 300_000 + bytes([i]) for i in range(50)]
    sizes = await pool.map(targets.size, iter(items)).addTimeout(WAIT, reactor)
    assert sizes == [len(item) for item in items]


@pytest_twisted.ensureDeferred
async def test_results_that_grow_past_max_call_bytes_fail_the_map_naming_their_items(pool):
    """Automatic chunks are sized from the results measured so far: results that suddenly
    grow a hundred-thousandfold can still make one chunk's results too large. The map then
    fails saying which items and what to do (the items ran once; none is run again)."""
    lengths = [1] * 2000 + [300_000] * 50
    with pytest.raises(ValueError, match=r"items \d+ to \d+ of the map .* lower chunksize"):
        await pool.map(targets.make, lengths).addTimeout(WAIT, reactor)
    assert await pool.map(targets.make, lengths[-50:], chunksize=1).addTimeout(WAIT, reactor)


def _run(script: str, cwd, tmp_path) -> str:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    done = subprocess.run(
        [sys.executable, str(path)],
        cwd=cwd,
        env={"PYTHONPATH": f"{ROOT}:{TESTS}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr[-800:]
    return done.stdout.strip()


RUN_CALL = """
    import sys
    {setup}
    from twisted.internet import defer, task
    import gaspar_tw
    {imports}

    async def main(reactor):
        pool = gaspar_tw.ProcessPool({handler}workers=1)
        pool.startService()
        try:
            print({caller!s}, "|", await pool.call({call}))
        finally:
            await pool.stopService()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    """


def test_workers_run_the_callers_module_not_the_handler_dirs_namesake(tmp_path):
    """The caller imports utils from its script's directory (first on its path); the
    handler's directory, appended after it, holds another utils: workers must run the
    caller's utils.f, not silently the other one."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "lib_handlers.py").write_text("def work(request):\n    return request\n")
    (lib / "utils.py").write_text("def f():\n    return 'lib'\n")
    (tmp_path / "utils.py").write_text("def f():\n    return 'script'\n")
    script = RUN_CALL.format(
        setup=f"sys.path.append({str(lib)!r})",
        imports="import utils",
        handler="'lib_handlers:work', ",
        caller="utils.f()",
        call="utils.f",
    )
    assert _run(script, tmp_path, tmp_path) == "script | script"


def test_workers_do_not_import_from_the_callers_working_directory(tmp_path):
    """A file in the directory the caller runs from, named like an installed package, is
    not on the caller's path (a script's directory is): the workers must import the
    installed package too, not that file."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "hyperlink.py").write_text("x = 1\n")
    script = RUN_CALL.format(
        setup="",
        imports="import hyperlink, size_targets",
        handler="",
        caller="hyperlink.__file__",
        call="size_targets.module_file, 'hyperlink'",
    )
    caller, worker = _run(script, elsewhere, tmp_path).split(" | ")
    assert worker == caller
