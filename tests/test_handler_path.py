"""Workers import the handler from where the producer did, not only from its working directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import pytest_twisted
from conftest import child_env
from twisted.internet import reactor

from gaspar_tw import HandlerError, ProcessPool

SCRIPT = textwrap.dedent(
    """
    from twisted.internet import defer, task

    import gaspar_tw


    async def main(reactor):
        pool = gaspar_tw.ProcessPool("beside:shout", workers=1, reactor=reactor, timeout=5)
        pool.startService()
        try:
            print(await pool.submit(b"hello"))
        finally:
            await pool.stopService()


    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    """
)


def test_a_script_run_from_another_directory_has_its_handler_found_by_the_workers(tmp_path):
    # `python app/submit.py` from elsewhere: the script's directory is on the producer's path
    # (Python puts it there), not on a worker's, which used to wait out --timeout for a worker
    # that could never load the handler.
    app = tmp_path / "app"
    app.mkdir()
    (app / "beside.py").write_text("def shout(message):\n    return message.upper()\n")
    (app / "submit.py").write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(app / "submit.py")],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "b'HELLO'"


ONLY_IN_THE_PRODUCER = """
import sys

if getattr(sys.modules["__main__"].__spec__, "name", "") == "gaspar_tw.worker.__main__":
    import gaspar_tw_no_such_dependency  # what a worker's environment lacks


def work(message):
    return message
"""


@pytest_twisted.ensureDeferred
async def test_a_handler_the_workers_cannot_load_fails_requests_at_once_saying_why(
    tmp_path, monkeypatch
):
    # The producer imports it, its workers cannot: requests used to wait out --timeout and
    # fail with "no worker was free".
    (tmp_path / "producer_only.py").write_text(ONLY_IN_THE_PRODUCER)
    monkeypatch.syspath_prepend(str(tmp_path))
    pool = ProcessPool("producer_only:work", 1, timeout=30)
    pool.startService()
    try:
        started = time.monotonic()
        with pytest.raises(HandlerError) as failed:
            await pool.submit(b"hello").addTimeout(20, reactor)
        assert time.monotonic() - started < 10
        assert str(failed.value).startswith(
            "worker processes cannot load handler 'producer_only:work': importing module"
            " 'producer_only' for handler 'producer_only:work' failed: ModuleNotFoundError:"
            " No module named 'gaspar_tw_no_such_dependency'"
        ), failed.value
    finally:
        await pool.stopService()
