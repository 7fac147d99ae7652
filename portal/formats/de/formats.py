"""Dates as German users write them: 18.07.2025, 18.07.2025 14:05 (Django's own de formats otherwise)."""

SHORT_DATE_FORMAT = "d.m.Y"
SHORT_DATETIME_FORMAT = "d.m.Y H:i"
