"""A SIGTERM sent to a daemonised twistd gaspar as soon as it has returned (`kill $(cat ...)`)."""

from __future__ import annotations

import os
import signal
import subprocess

from conftest import TWISTD, child_env, wait_until


def test_a_sigterm_right_after_twistd_returns_still_drains_and_removes_the_pid_file(tmp_path):
    # twistd's parent returns once the service has started, before the daemon's reactor runs
    # and installs its signal handlers: a SIGTERM then used to kill it outright (no drain, no
    # "stopped", the pid file left behind).
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    argv = [*TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "gaspar"]
    argv += ["--handler", "gaspar_tw.examples:echo", "--endpoint", "tcp:0:interface=127.0.0.1"]
    started = subprocess.run(
        [*argv, "--workers", "1"], cwd=tmp_path, env=child_env(), capture_output=True, timeout=60
    )
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not pidfile.exists(), 15), "pid file left: killed, not stopped"
    log = logfile.read_text()
    # Drained by us, or (the signal landing in the instant between the reactor installing its
    # handlers and ours) stopped by twistd's own handler: stopped either way, not killed.
    assert "gaspar_tw producer stopped" in log, log
