"""Log formatting that never writes an exception's message.

An exception's text may quote a server's answer, a token endpoint's reply or a
password a library echoed; the log names the exception's type and where it was
raised (file, line, function), which is what support needs to find the bug.
"""

import logging
import traceback


def describe(error: BaseException, frames: int = 3) -> str:
    """ "TypeName at file:line in function < file:line in function ..." for the innermost `frames` frames of
    the error's traceback (innermost first), never its message: for log lines written without exc_info, so
    that no handler (Celery's own on the root logger included) can print the message."""
    where = [f"{frame.filename}:{frame.lineno} in {frame.name}"
             for frame in reversed(traceback.extract_tb(error.__traceback__)[-frames:])]
    return f"{type(error).__qualname__} at {' < '.join(where)}" if where else type(error).__qualname__


class TypeAndLocationFormatter(logging.Formatter):
    """A logging.Formatter whose tracebacks are the exception types and frames only.

    formatException((type, value, tb)) -> "Traceback (type and location only):\n  file:line in function\n...
    TypeName" for the exception and each cause/context it chains, never str(value).
    """

    def format(self, record: logging.LogRecord) -> str:
        # Another handler may have cached its own traceback text (with the message) on the record.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatException(self, ei) -> str:
        _, error, tb = ei
        parts, seen = [], set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            frames = traceback.extract_tb(tb if not parts else error.__traceback__)
            lines = [f"  {frame.filename}:{frame.lineno} in {frame.name}" for frame in frames[-8:]]
            parts.append("\n".join(["Traceback (type and location only):", *lines, type(error).__qualname__]))
            error = error.__cause__ or error.__context__
        return "\nwhile handling, caused by:\n".join(reversed(parts)) if len(parts) > 1 else (parts[0] if parts else "")
