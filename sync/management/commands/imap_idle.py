"""manage.py imap_idle [--shard i/N]: the push listener (sync.imap.idle): IMAP IDLE and EWS pull subscriptions.

Start N processes with --shard 0/N .. N-1/N (one shard each); start more than one
per shard for a hot standby: the second waits on the shard's database lock and
takes over within IMAP_IDLE_REFRESH_SECONDS when the first dies (even by SIGKILL).
SIGTERM/SIGINT stop it cleanly (the connections log out).
"""

import logging
import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from sync.imap import idle

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Listen with IMAP IDLE on the INBOX of the V3 IMAP accounts of one shard and queue a sync on new mail."

    def add_arguments(self, parser):
        parser.add_argument("--shard", default="0/1", help="i/N: serve the accounts whose id %% N == i (default 0/1)")

    def handle(self, *args, shard, **options):
        try:
            number, shards = (int(part) for part in shard.split("/"))
        except ValueError:
            raise CommandError("--shard must look like i/N, e.g. 0/4") from None
        if not (shards >= 1 and 0 <= number < shards):
            raise CommandError("--shard i/N needs N >= 1 and 0 <= i < N")
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        idle.serve(number, shards, stop=stop)
        if not stop.is_set():
            raise CommandError(f"IMAP IDLE shard {shard} lost its database lock")  # the supervisor restarts it
