"""The embedded broker (CELERY_BROKER_URL=filesystem://): kombu's file-system transport, with each message
handed over whole, taken by exactly one reader, and kept until it is acknowledged.

kombu's own transport (kombu/transport/filesystem.py, 5.6) creates a message's file and then writes it; a
worker that lists the folder in between reads an empty file, fails on its JSON and stops ("Unrecoverable
error"), and the message is gone until the sweeper re-queues its migration. It also deletes a message as soon
as a worker has read it, so a worker killed while running a task (kill -9, out of memory) loses that task,
whatever CELERY_TASK_ACKS_LATE says.

Here:
- a message is written in a staging folder and renamed into the queue folder (rename is atomic within one
  file system, POSIX rename(2)); names sort in the order they were sent;
- a reader claims it by renaming it into the claimed folder, under its pid: one rename wins, the others find
  it gone; the file stays there until the message is acknowledged, rejected or handed back;
- a reader's first read puts back into the queue what readers that no longer run had claimed;
- a file that does not hold a message is moved to the rejected folder with an error in the log, and the
  reader goes on with the next one.
Everything else (exchanges, fan-out, polling, purge) is kombu's.
"""

import itertools
import logging
import os
import threading
import time
import uuid

from kombu.transport import filesystem
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

logger = logging.getLogger(__name__)

SUFFIX = ".msg"
_sequence = itertools.count()
# delivery tag -> the claimed file of a message this process holds and has not acknowledged yet.
_claimed: dict[str, str] = {}
_claimed_lock = threading.Lock()
_recovered_in: set[str] = set()  # claimed folders this process has looked through


def message_name(queue: str) -> str:
    """'<ns since the epoch, 20 digits>-<pid>-<sequence>_<uuid4>.<queue>.msg': names sort in sent order
    within a process and by time across processes, also across a reboot."""
    return f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):012d}_{uuid.uuid4()}.{queue}{SUFFIX}"


def queue_of(name: str) -> str | None:
    """The queue a message file belongs to (the part before the first dot holds none, a queue name may)."""
    head, dot, rest = name.partition(".")
    return rest[: -len(SUFFIX)] if dot and "_" in head and rest.endswith(SUFFIX) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class Channel(filesystem.Channel):
    """kombu's file-system channel with atomic put, claim and acknowledgement (see the module's docstring)."""

    @cached_property
    def staging_folder(self) -> str:
        return self.transport_options["staging_folder"]

    @cached_property
    def claimed_folder(self) -> str:
        return self.transport_options["claimed_folder"]

    @cached_property
    def rejected_folder(self) -> str:
        return self.transport_options["rejected_folder"]

    def _put(self, queue, payload, **kwargs):
        name = message_name(queue)
        staging = os.path.join(self.staging_folder, name)
        with open(staging, "wb") as file:
            file.write(str_to_bytes(dumps(payload)))
        os.replace(staging, os.path.join(self.data_folder_out, name))

    def _get(self, queue):
        self._recover_abandoned()
        for name in sorted(os.listdir(self.data_folder_in)):
            if queue_of(name) != queue:
                continue
            claimed = os.path.join(self.claimed_folder, f"{os.getpid()}-{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another reader took it
            message = self._read(claimed, name, queue)
            if message is None:
                continue
            tag = message["properties"].get("delivery_tag")
            if tag and queue not in self._no_ack_queues:
                with _claimed_lock:
                    _claimed[tag] = claimed
            else:
                os.remove(claimed)  # nothing will acknowledge it (remote control consumes without acks)
            return message
        raise Empty()

    def _read(self, claimed: str, name: str, queue: str) -> dict | None:
        try:
            with open(claimed, "rb") as file:
                message = loads(bytes_to_str(file.read()))
            if not (isinstance(message, dict) and "body" in message and isinstance(message.get("properties"), dict)):
                raise ValueError("not a message")
        except ValueError:
            rejected = os.path.join(self.rejected_folder, name)
            os.replace(claimed, rejected)
            logger.error("Embedded broker: message %s in queue %s is unreadable, moved to %s", name, queue, rejected)
            return None
        return message

    def _recover_abandoned(self) -> None:
        """Once per process: messages claimed by a reader that no longer runs go back into the queue."""
        if self.claimed_folder in _recovered_in:
            return
        _recovered_in.add(self.claimed_folder)
        for entry in os.listdir(self.claimed_folder):
            pid, _dash, name = entry.partition("-")
            if pid.isdigit() and queue_of(name) and not _alive(int(pid)):
                try:
                    os.rename(os.path.join(self.claimed_folder, entry), os.path.join(self.data_folder_in, name))
                    logger.warning("Embedded broker: message %s of a stopped worker (pid %s) queued again", name, pid)
                except FileNotFoundError:
                    pass  # another reader recovered it

    def _done_with(self, delivery_tag) -> None:
        with _claimed_lock:
            claimed = _claimed.pop(delivery_tag, None)
        if claimed:
            try:
                os.remove(claimed)
            except FileNotFoundError:
                pass

    @cached_property
    def _no_ack_queues(self) -> set:
        return set()

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_get(self, queue, no_ack=False, **kwargs):
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self._done_with(message.delivery_tag)
        return message

    def basic_ack(self, delivery_tag, multiple=False):
        super().basic_ack(delivery_tag, multiple=multiple)
        self._done_with(delivery_tag)

    def basic_reject(self, delivery_tag, requeue=False):
        super().basic_reject(delivery_tag, requeue=requeue)  # requeue: _restore below writes it again
        self._done_with(delivery_tag)

    def _restore(self, message):
        super()._restore(message)  # a new file in the queue; the claimed one is done with
        self._done_with(message.delivery_tag)

    def _size(self, queue):
        return sum(1 for name in os.listdir(self.data_folder_in) if queue_of(name) == queue)


class Transport(filesystem.Transport):
    """Selected by portal.celery for filesystem:// (Celery's broker_transport)."""

    Channel = Channel
