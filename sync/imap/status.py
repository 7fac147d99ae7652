"""Every syncable folder's cursor in a constant number of round trips, whatever the folder count.

An unchanged mailbox is the common case of a poll: what it costs is what the
server's round trips cost. One STATUS per folder, each waiting for its answer,
is one round trip per folder (59 for a 50-folder mailbox; 1.2 s at 20 ms to the
server). Instead:

- LIST-STATUS (RFC 5819), where the server advertises it: the STATUS items come
  with the LIST answer, one command for every folder.
- Otherwise LIST, then every STATUS command written in one go and the answers
  read afterwards. RFC 3501 section 5.5 allows a client to send several commands
  without waiting; STATUS answers name their mailbox, so they are matched by
  name, and each command's own NO is matched by its tag. IMAPClient 4 has no
  pipelining API (every call waits for its tagged answer), so
  `status_pipelined` writes the commands through its imaplib connection and
  reads the answers with imaplib's own response reader.

A folder the server leaves out of LIST-STATUS (it could not open it) gets a
STATUS of its own, so its refusal (NO) is reported like before.
"""

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.response_parser import parse_response

from sync.imap import folders as imap_folders


def status_items(client: IMAPClient) -> list[str]:
    """The STATUS items a cursor needs: HIGHESTMODSEQ only where the server has CONDSTORE (RFC 7162)."""
    items = ["UIDVALIDITY", "UIDNEXT", "MESSAGES"]
    if b"CONDSTORE" in client.capabilities():
        items.append("HIGHESTMODSEQ")
    return items


def cursor_of(status: dict) -> dict:
    """A folder's V3 cursor from its STATUS items ({b"UIDVALIDITY": int, ...}).

    {"uidvalidity": int, "uidnext": int, "highestmodseq": int | None, "messages": int | None}.
    Raises KeyError when the server left out UIDVALIDITY or UIDNEXT (RFC 3501
    section 6.3.10 says it returns what was asked): a server no one foresaw.
    """
    return {
        "uidvalidity": int(status[b"UIDVALIDITY"]),
        "uidnext": int(status[b"UIDNEXT"]),
        "highestmodseq": int(status[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in status else None,
        "messages": int(status[b"MESSAGES"]) if b"MESSAGES" in status else None,
    }


def syncable_cursors(client: IMAPClient) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
    """LIST the syncable folders (sync.imap.folders) with each one's cursor (cursor_of).

    Returns (cursors by folder name, INBOX first; problems), problems being
    (folder, reason, detail) of folders left out: "folder_name_too_long" (name
    cut to MAX_NAME_LENGTH) or "folder_unreadable" (the server refused STATUS;
    detail: the error's class name). One round trip with LIST-STATUS, two
    without. Raises IMAPClientAbortError / OSError when the connection breaks,
    KeyError as cursor_of.
    """
    items = status_items(client)
    names, statuses = _list(client, items)
    problems, wanted = [], []
    for name in names:
        if len(name) > imap_folders.MAX_NAME_LENGTH:
            problems.append((name[: imap_folders.MAX_NAME_LENGTH], "folder_name_too_long", f"{len(name)} characters"))
        else:
            wanted.append(name)
    missing = [name for name in wanted if name not in statuses]
    if missing:
        statuses.update(status_pipelined(client, missing, items))
    cursors = {}
    for name in wanted:
        status = statuses[name]
        if isinstance(status, IMAPClientError):
            problems.append((name, "folder_unreadable", type(status).__name__))
        else:
            cursors[name] = cursor_of(status)
    return cursors, problems


def _list(client: IMAPClient, items: list[str]) -> tuple[list[str], dict[str, dict]]:
    """(syncable names, STATUS items by name where LIST-STATUS delivered them)."""
    if b"LIST-STATUS" not in client.capabilities():
        return imap_folders.syncable_folders(client), {}
    imap = client._imap
    imap.untagged_responses.pop("STATUS", None)
    # With any RETURN option the special-use flags come only when asked for (RFC 6154 section 2),
    # and asking is allowed only where the server has SPECIAL-USE.
    special_use = "SPECIAL-USE " if b"SPECIAL-USE" in client.capabilities() else ""
    typ, data = imap._simple_command("LIST", '""', '"*"', f"RETURN ({special_use}STATUS ({' '.join(items)}))")
    client._checkok("list", typ, data)
    _typ, listed = imap._untagged_response(typ, data, "LIST")
    folders = client._proc_folder_list(listed)
    return imap_folders.syncable_of(folders), _statuses(client, imap.untagged_responses.pop("STATUS", []))


def status_pipelined(client: IMAPClient, names: list[str], items: list[str]) -> dict[str, dict | IMAPClientError]:
    """STATUS of every folder in `names` in one round trip (module docstring); the folder's STATUS
    items, or an IMAPClientError for a folder the server refused (NO or BAD).

    Raises IMAPClientAbortError when the connection breaks or the server says BYE.
    """
    imap = client._imap
    imap.untagged_responses.pop("STATUS", None)
    wanted = b"(" + " ".join(items).encode("ascii") + b")"
    tags, lines = {}, []
    for name in names:
        tag = imap._new_tag()  # registers the tag, so the reader accepts its answer
        tags[tag] = name
        lines.append(tag + b" STATUS " + client._normalise_folder(name) + b" " + wanted + b"\r\n")
    try:
        imap.send(b"".join(lines))  # one write: the server sees every command before it answers one
        answers = {}
        for tag, name in tags.items():
            while imap.tagged_commands.get(tag) is None:
                imap._get_response()
            imap._check_bye()
            answers[name] = imap.tagged_commands.pop(tag)
    except (OSError, imap.abort) as error:
        raise IMAPClientAbortError(str(error)) from None
    statuses = _statuses(client, imap.untagged_responses.pop("STATUS", []))
    result = {}
    for name, (typ, data) in answers.items():
        if typ != "OK":
            text = data[0].decode("utf-8", "replace") if data and isinstance(data[0], bytes) else ""
            result[name] = IMAPClientError(f"STATUS failed: {typ} {text[:200]}")
        else:
            result[name] = statuses[name]  # KeyError: an OK without its STATUS answer
    return result


def _statuses(client: IMAPClient, untagged: list) -> dict[str, dict]:
    """Untagged STATUS answers (imaplib's raw list) by decoded folder name."""
    untagged = [item for item in untagged if item not in (b"", None)]
    if not untagged:
        return {}
    parsed = parse_response(untagged)
    result = {}
    for name, values in zip(parsed[0::2], parsed[1::2]):
        if isinstance(name, int):
            name = str(name)  # a quoted numeric name parses as a number
        elif isinstance(name, bytes):
            name = decode_utf7(name) if client.folder_encode else name.decode("utf-8", "replace")
        result[name] = dict(zip(values[0::2], values[1::2]))
    return result
