"""The embedded broker (CELERY_BROKER_URL=filesystem://): kombu's file-system transport, with each message
handed over whole and taken by exactly one reader.

kombu's own transport (kombu/transport/filesystem.py, 5.6) creates a message's file and then writes it; a
worker that lists the folder in between reads an empty file, fails on its JSON and stops ("Unrecoverable
error"), and the message is gone until the sweeper re-queues its migration. Moving a message to the reader
falls back to copy-and-delete when /tmp is another file system, so two readers could both take it.

Here a message is written in a staging folder and renamed into the queue folder (rename is atomic within one
file system, POSIX rename(2)), and a reader claims it by renaming it into its claimed folder beside the
queue: one rename wins, the others find it gone. A file that still does not decode is moved to the rejected
folder with an error in the log, and the reader goes on with the next message. Everything else (exchanges,
fan-out, polling, sizes) is kombu's.
"""

import logging
import os
import time
import uuid

from kombu.transport import filesystem
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

logger = logging.getLogger(__name__)

SUFFIX = ".msg"


def message_name(queue: str) -> str:
    """'<monotonic ms>_<uuid4>.<queue>.msg', as kombu names them: sorted by name is sent order."""
    return f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}{SUFFIX}"


def queue_of(name: str) -> str | None:
    """The queue a message file belongs to (the uuid holds no dot, a queue name may), or None."""
    head, dot, rest = name.partition(".")
    return rest[: -len(SUFFIX)] if dot and "_" in head and rest.endswith(SUFFIX) else None


class Channel(filesystem.Channel):
    """kombu's file-system channel with atomic put and claim (see the module's docstring)."""

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
        for name in sorted(os.listdir(self.data_folder_in)):
            if queue_of(name) != queue:
                continue
            # The reader's pid in the name: two readers never claim into one path.
            claimed = os.path.join(self.claimed_folder, f"{os.getpid()}-{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another reader took it
            try:
                with open(claimed, "rb") as file:
                    message = loads(bytes_to_str(file.read()))
            except ValueError:
                rejected = os.path.join(self.rejected_folder, name)
                os.replace(claimed, rejected)
                logger.error("Embedded broker: message %s in queue %s is unreadable, moved to %s",
                             name, queue, rejected)
                continue
            os.remove(claimed)
            return message
        raise Empty()

    def _size(self, queue):
        return sum(1 for name in os.listdir(self.data_folder_in) if queue_of(name) == queue)


class Transport(filesystem.Transport):
    """Selected by portal.celery for filesystem:// (Celery's broker_transport)."""

    Channel = Channel
