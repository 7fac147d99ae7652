"""Dates for English readers, unambiguous on both sides of the Atlantic: 18 Jul 2025, 18 Jul 2025, 14:05."""

SHORT_DATE_FORMAT = "j M Y"
SHORT_DATETIME_FORMAT = "j M Y, H:i"
