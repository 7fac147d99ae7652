from django.db import models


class Heartbeat(models.Model):
    """When a background process last showed it was alive; GET /health/ reads these.

    One row per role ("worker", "beat"), shared by every process of every
    deployment through the database (the embedded default's cache is per
    process, so the cache could not carry it). Several workers share the
    "worker" row: it says that at least one worker ran recently.
    """

    name = models.CharField(primary_key=True, max_length=20)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} @ {self.seen_at:%Y-%m-%d %H:%M:%S}"
