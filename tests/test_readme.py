"""The README's examples, run as a newcomer would paste them.

Each literal block of README.rst follows a ``.. test:`` comment (invisible once rendered) that
says what to do with it:

- ``file NAME``: write the block to NAME in the examples' directory;
- ``shell`` / ``python``: run it there (bash, or this interpreter), expecting exit status 0;
- ``skip REASON``: not run (output samples, synopses, what needs two machines or a compiler);

and, for ``shell``/``python``, these words:

- ``daemon``: it runs until stopped: start it, wait for ``ready=TEXT`` in its output, leave it
  running for the blocks after it; at the end (or at an ``alone`` block) it gets SIGTERM and
  must exit with status 0 (or by that SIGTERM, as ``twistd -y`` does);
- ``alone``: stop every running daemon first;
- ``prints=TEXT``: its output must contain TEXT;
- ``gone=FILE``: FILE must be gone within a few seconds after it (a daemon's pid file).

The README's ports are replaced by free ones (a ``twistd gaspar`` on the default port is given
the one that stands for 10123, and ``twistd -n`` no pid file: the examples' "machines" share a
directory), ``10.0.0.1`` by ``127.0.0.1``, ``.venv/bin/``
by this interpreter's directory, and a command's leading ``python3 -m venv .venv && ...pip
install ... &&`` is dropped (this interpreter has the package already). In a block of ``$ ``
lines (a command and a sample of its output) the commands are run, the sample is not compared,
and a load test's ``--requests`` is capped at 1,000 to keep the suite fast.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import ROOT, child_env, wait_until

README = ROOT / "README.rst"
PORTS = ("10123", "10124", "10127", "10128", "9100", "5570")
MARKER = re.compile(r"^\.\. test: (.*)$")


@dataclass
class Example:
    line: int
    kind: str
    words: list[str]
    text: str
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for word in self.words:
            name, sep, value = word.partition("=")
            self.options[name] = value if sep else ""


def literal_blocks(lines: list[str]) -> list[tuple[int, str, str | None]]:
    """(line, text, marker) of each literal block: the indented lines after a line ending in
    ``::``, with the ``.. test:`` comment seen since the previous block, if any."""
    blocks = []
    marker = None
    i = 0
    while i < len(lines):
        found = MARKER.match(lines[i])
        if found:
            marker = found.group(1)
        if lines[i].rstrip().endswith("::") and not lines[i].lstrip().startswith(".."):
            start = i + 1
            while start < len(lines) and not lines[start].strip():
                start += 1
            end = start
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
                end += 1
            body = [line[4:] for line in lines[start:end]]
            blocks.append((i + 1, "\n".join(body).strip("\n") + "\n", marker))
            marker = None
            i = end
            continue
        i += 1
    return blocks


def examples() -> list[Example]:
    found = []
    for line, text, marker in literal_blocks(README.read_text().splitlines()):
        if marker is None:
            found.append(Example(line, "unmarked", [], text))
            continue
        kind, *words = shlex.split(marker)
        found.append(Example(line, kind, words, text))
    return found


def test_every_readme_example_says_how_it_is_checked():
    unmarked = [e.line for e in examples() if e.kind == "unmarked"]
    assert not unmarked, f"README.rst literal blocks without a '.. test:' comment: lines {unmarked}"
    kinds = {e.kind for e in examples()}
    assert kinds <= {"file", "shell", "python", "skip"}, kinds
    assert all(e.words for e in examples() if e.kind in ("file", "skip")), "file NAME, skip WHY"


def free_ports() -> dict[str, str]:
    ports, sockets = {}, []
    for readme_port in PORTS:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports[readme_port] = str(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


class Runner:
    """Runs the examples in order in one directory; owns the daemons they start."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = free_ports()
        self.bin = Path(sys.executable).parent
        self.env = child_env()
        self.env["PATH"] = f"{self.bin}{os.pathsep}{self.env['PATH']}"
        self.daemons: list[tuple[Example, subprocess.Popen, Path]] = []

    def adapt(self, text: str) -> str:
        for readme_port, port in self.ports.items():
            text = re.sub(rf"\b{readme_port}\b", port, text)
        text = text.replace("10.0.0.1", "127.0.0.1").replace(".venv/bin/", f"{self.bin}/")
        if "--port" not in text and "--endpoint" not in text:  # the default port: 10123's
            text = re.sub(r"(twistd (-n )?gaspar) ", rf"\1 --port {self.ports['10123']} ", text)
        text = text.replace("twistd -n ", "twistd -n --pidfile= ")  # "machines" share a directory
        if text.startswith("$ "):
            commands = [line[2:] for line in text.splitlines() if line.startswith("$ ")]
            text = re.sub(r"--requests \d+", "--requests 1000", "\n".join(commands) + "\n")
        return re.sub(r"^python3 -m venv \.venv && \S+/pip install \S+ && ", "", text)

    def argv(self, example: Example) -> list[str]:
        text = self.adapt(example.text)
        if example.kind == "python":
            script = self.directory / f"example_{example.line}.py"
            script.write_text(text)
            return [sys.executable, script.name]
        return ["bash", "-euo", "pipefail", "-c", text]

    def run(self, example: Example) -> None:
        if example.kind == "skip":
            return
        if example.kind == "file":
            (self.directory / example.words[0]).write_text(self.adapt(example.text))
            return
        if "alone" in example.options:
            self.stop_daemons()
        if "daemon" in example.options:
            self.start_daemon(example)
            return
        result = subprocess.run(
            self.argv(example),
            cwd=self.directory,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = result.stdout + result.stderr
        where = f"README.rst line {example.line}:\n{example.text}\n{output}"
        assert result.returncode == 0, f"exit status {result.returncode}; {where}"
        assert example.options.get("prints", "") in output, where
        gone = example.options.get("gone")
        if gone:
            assert wait_until(lambda: not (self.directory / gone).exists(), 15), where

    def start_daemon(self, example: Example) -> None:
        log = self.directory / f"daemon_{example.line}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                self.argv(example),
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemons.append((example, process, log))
        ready = example.options["ready"]
        wait_until(lambda: ready in log.read_text() or process.poll() is not None, 20)
        assert ready in log.read_text(), (
            f"README.rst line {example.line}: {ready!r} not seen:\n{log.read_text()}"
        )

    def stop_daemons(self) -> None:
        daemons, self.daemons = self.daemons, []
        for example, process, log in reversed(daemons):  # worker hosts before their producer
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(f"README.rst line {example.line}: no exit after SIGTERM")
            finally:
                try:  # whatever it left in its session
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            assert status in (0, -signal.SIGTERM), (
                f"README.rst line {example.line}: exit status {status} after SIGTERM:\n"
                + log.read_text()
            )


def test_the_readme_examples_run(tmp_path):
    runner = Runner(tmp_path)
    started = time.monotonic()
    try:
        for example in examples():
            runner.run(example)
    finally:
        runner.stop_daemons()
    assert time.monotonic() - started < 120
