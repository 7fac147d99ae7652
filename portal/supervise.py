"""python -m portal.supervise --name NAME [options] -- COMMAND...: keep an embedded child running.

scripts/run starts the demo mail server and the worker through this. When the
child exits on its own (Dovecot died on a full disk, the worker crashed), it
is started again after a back-off that doubles from --initial-delay up to
--max-delay and starts over once a child ran --stable-after seconds. Every
exit and restart is logged to stderr (scripts/run sends it to the child's log
file). SIGTERM or SIGINT stops the child (SIGTERM, then SIGKILL after
--stop-timeout) and the supervisor, without a restart.
Nothing here runs in production: there, docker-compose restarts services.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime

# How often the supervisor looks whether it was asked to stop while it waits.
POLL_SECONDS = 0.2


class Supervisor:
    """Runs argv again and again until stop(); delays in seconds."""

    def __init__(self, argv: Sequence[str], *, name: str, initial_delay: float = 1.0, max_delay: float = 60.0,
                 stable_after: float = 60.0, stop_timeout: float = 20.0, log: Callable[[str], None] | None = None):
        if not argv:
            raise ValueError("nothing to supervise: give a command after --")
        self.argv, self.name = list(argv), name
        self.initial_delay, self.max_delay, self.stable_after = initial_delay, max_delay, stable_after
        self.stop_timeout = stop_timeout
        self.log = log or _log_to_stderr
        self.restarts = 0
        self._stopping = False
        self._child: subprocess.Popen | None = None

    def run(self) -> int:
        """Until stop(): start the child, wait for it, back off, start it again. Returns 0."""
        delay = self.initial_delay
        while not self._stopping:
            started = time.monotonic()
            try:
                # Its own process group: what it leaves behind can be found and stopped (below).
                self._child = subprocess.Popen(self.argv, process_group=0)
            except OSError as error:  # the command itself is missing: keep trying, it may be installed meanwhile
                self.log(f"{self.name} could not be started: {error.strerror}")
                code = None
            else:
                code = self._wait_for_child()
                self._stop_leftovers(self._child.pid)
            if self._stopping:
                break
            if time.monotonic() - started >= self.stable_after:
                delay = self.initial_delay  # it ran fine for a while: this is a new incident
            self.restarts += 1
            self.log(f"{self.name} exited with code {code}; restart {self.restarts} in {delay:g} s")
            self._sleep(delay)
            delay = min(delay * 2, self.max_delay)
        return 0

    def stop(self) -> None:
        """End run(): the child gets SIGTERM (SIGKILL after stop_timeout). Safe in a signal handler."""
        # Only a flag and a kill(2) here: locks taken in a signal handler can deadlock.
        self._stopping = True
        child = self._child
        if child is not None and child.returncode is None:
            try:
                child.terminate()
            except ProcessLookupError:
                pass

    def _wait_for_child(self) -> int:
        child, terminated_at = self._child, None
        while True:
            try:
                return child.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                if not self._stopping:
                    continue
            if terminated_at is None:  # stop() came while the child was being started
                child.terminate()
                terminated_at = time.monotonic()
            elif time.monotonic() - terminated_at > self.stop_timeout:
                self.log(f"{self.name} did not stop within {self.stop_timeout:g} s: killing it")
                child.kill()

    def _stop_leftovers(self, group: int) -> None:
        """Stop what a child that died left in its process group (SIGTERM, SIGKILL after stop_timeout).

        A worker killed with -B leaves its embedded beat running: restarted, there would be two beats.
        """
        deadline, sig = time.monotonic() + self.stop_timeout, signal.SIGTERM
        while True:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                return  # nothing left
            if sig == signal.SIGKILL:
                return
            if sig == signal.SIGTERM:
                if not self._stopping:  # on a stop, the child's own children may just be finishing
                    self.log(f"{self.name} left processes behind: stopping them")
                sig = 0  # from now on only: is anything left?
            time.sleep(POLL_SECONDS)
            if time.monotonic() > deadline:
                sig = signal.SIGKILL

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def _log_to_stderr(line: str) -> None:
    # With the UTC offset: the worker's own lines beside these are in Django's TIME_ZONE, ours in the system's.
    print(f"[{datetime.now().astimezone():%Y-%m-%d %H:%M:%S%z}] supervise: {line}", file=sys.stderr, flush=True)


def main(arguments: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m portal.supervise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="what the logs call the child")
    parser.add_argument("--initial-delay", type=float, default=1.0, help="seconds before the first restart")
    parser.add_argument("--max-delay", type=float, default=60.0, help="longest wait between restarts")
    parser.add_argument("--stable-after", type=float, default=60.0,
                        help="a child that ran this long resets the back-off")
    parser.add_argument("--stop-timeout", type=float, default=20.0, help="seconds from SIGTERM to SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    options = parser.parse_args(arguments)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("give the command to run after --")
    supervisor = Supervisor(command, name=options.name, initial_delay=options.initial_delay,
                            max_delay=options.max_delay, stable_after=options.stable_after,
                            stop_timeout=options.stop_timeout)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: supervisor.stop())
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
