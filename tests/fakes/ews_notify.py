"""Pull notifications for the fake EWS (tests.fakes.ews): Subscribe (PullSubscriptionRequest), GetEvents,
Unsubscribe, as Microsoft's EWS reference and "Pull notifications with EWS" describe them.

A subscription watches folders (FolderIds) for event types (EventTypes) and lives
while it is asked for events at least every Timeout minutes; events queue on the
server between two GetEvents, each with its own Watermark, and GetEvents answers
those after the watermark it is given (a StatusEvent with the current watermark
when there are none). A subscription the server no longer has answers
ErrorSubscriptionNotFound; a watermark it never issued for it ErrorInvalidWatermark.

Switches on FakeEWS.notify: enabled = False (a server that refuses
subscriptions: Subscribe answers notifications_refusal); expire_subscriptions()
(every subscription timed out); forged (event XML added to the next GetEvents
answer of every subscription, for the forged-event tests); events_page (MoreEvents paging).
"""

import base64
import itertools
import time
from datetime import datetime, timezone
from xml.sax.saxutils import escape, quoteattr

from tests.fakes.ews_xml import M, T, _error, _when

_ids = itertools.count(1)


class Notifications:
    """The subscriptions of one FakeEWS (its _lock held by every caller)."""

    def __init__(self, fake):
        self.fake = fake
        self.enabled = True
        self.refusal = "ErrorInvalidRequest"
        # subscription id -> {"folders": {key}, "types": {event type}, "timeout": seconds, "asked": monotonic,
        #                      "events": [(number, xml)], "issued": highest watermark number issued}
        self.subscriptions: dict[str, dict] = {}
        self.forged: list[str] = []
        self.page = 50

    def event(self, folder: str, item: dict, kinds=("NewMailEvent", "CreatedEvent")) -> None:
        """Queue events for an item that arrived in `folder` on every subscription watching it."""
        parent = self.fake.hierarchy[folder]["id"]
        for subscription in self.subscriptions.values():
            if folder not in subscription["folders"]:
                continue
            for kind in kinds:
                if kind in subscription["types"]:
                    number = subscription["issued"] = subscription["issued"] + 1
                    subscription["events"].append((number, (
                        f"<t:{kind}><t:Watermark>{{watermark}}</t:Watermark>"
                        f"<t:TimeStamp>{_when(datetime.now(timezone.utc))}</t:TimeStamp>"
                        f'<t:ItemId Id={quoteattr(item["id"])} ChangeKey="ck"/>'
                        f'<t:ParentFolderId Id={quoteattr(parent)} ChangeKey="ck"/></t:{kind}>')))

    def expire(self) -> None:
        self.subscriptions.clear()

    def _live(self, subscription_id: str) -> dict | None:
        subscription = self.subscriptions.get(subscription_id)
        if subscription is not None and time.monotonic() - subscription["asked"] > subscription["timeout"]:
            del self.subscriptions[subscription_id]  # not asked within its Timeout: Exchange dropped it
            return None
        return subscription

    # --- operations ---------------------------------------------------------------------------------------------

    def subscribe(self, request) -> str:
        if not self.enabled:
            return _error("Subscribe", self.refusal, "Notifications are not available on this server.")
        pull = request.find(f"{{{M}}}PullSubscriptionRequest")
        if pull is None:  # streaming and push subscriptions are not offered by this fake
            return _error("Subscribe", "ErrorInvalidSubscriptionRequest", "Only pull subscriptions are offered.")
        folders = set()
        for ident in pull.find(f"{{{T}}}FolderIds"):
            key = self.fake._key_of(ident)
            if key is None:
                return _error("Subscribe", "ErrorFolderNotFound", "The specified folder could not be found.")
            folders.add(key)
        minutes = int(pull.findtext(f"{{{T}}}Timeout") or 0)
        if not 1 <= minutes <= 1440:
            return _error("Subscribe", "ErrorInvalidSubscriptionRequest", "Timeout must be 1 to 1440 minutes.")
        subscription_id = base64.b64encode(f"sub-{next(_ids)}".encode()).decode()
        self.subscriptions[subscription_id] = {
            "folders": folders, "types": {e.text for e in pull.iter(f"{{{T}}}EventType")},
            "timeout": minutes * 60, "asked": time.monotonic(), "events": [], "issued": 0,
        }
        return (
            '<m:SubscribeResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f"<m:SubscriptionId>{subscription_id}</m:SubscriptionId>"
            f"<m:Watermark>{_watermark(subscription_id, 0)}</m:Watermark></m:SubscribeResponseMessage>"
        )

    def get_events(self, request) -> str:
        subscription_id = request.findtext(f"{{{M}}}SubscriptionId") or ""
        subscription = self._live(subscription_id)
        if subscription is None:
            return _error("GetEvents", "ErrorSubscriptionNotFound", "The specified subscription was not found.")
        given = request.findtext(f"{{{M}}}Watermark") or ""
        seen = _number(given, subscription_id)
        if seen is None or seen > subscription["issued"]:
            return _error("GetEvents", "ErrorInvalidWatermark", "The watermark used for this request is invalid.")
        subscription["asked"] = time.monotonic()
        # Events the client has confirmed by asking with a later watermark are gone from the server.
        subscription["events"] = [(n, xml) for n, xml in subscription["events"] if n > seen]
        page = subscription["events"][: self.page]
        more = len(subscription["events"]) > len(page)
        events = "".join(xml.replace("{watermark}", _watermark(subscription_id, n)) for n, xml in page)
        if self.forged:
            events += "".join(self.forged).replace("{given}", escape(given))
            self.forged = []
        if not page:
            events += f"<t:StatusEvent><t:Watermark>{escape(given)}</t:Watermark></t:StatusEvent>"
        return (
            '<m:GetEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f"<m:Notification><t:SubscriptionId>{subscription_id}</t:SubscriptionId>"
            f"<t:PreviousWatermark>{escape(given)}</t:PreviousWatermark>"
            f"<t:MoreEvents>{'true' if more else 'false'}</t:MoreEvents>{events}</m:Notification>"
            "</m:GetEventsResponseMessage>"
        )

    def unsubscribe(self, request) -> str:
        subscription_id = request.findtext(f"{{{M}}}SubscriptionId") or ""
        if self.subscriptions.pop(subscription_id, None) is None:
            return _error("Unsubscribe", "ErrorSubscriptionNotFound", "The specified subscription was not found.")
        return '<m:UnsubscribeResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>' \
               "</m:UnsubscribeResponseMessage>"


def _watermark(subscription_id: str, number: int) -> str:
    return base64.b64encode(f"wm:{subscription_id}:{number}".encode()).decode()


def _number(watermark: str, subscription_id: str) -> int | None:
    try:
        magic, owner, number = base64.b64decode(watermark, validate=True).decode().rsplit(":", 2)
        return int(number) if magic == "wm" and owner == subscription_id else None
    except ValueError:
        return None
