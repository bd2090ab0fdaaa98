"""Workers import the handler from where the producer did, not only from its working directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import child_env

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
