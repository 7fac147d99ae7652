"""The change-notification half of the Graph fake: /subscriptions, validation, notifications, lifecycle.

As Graph does it ("Create subscription", "Receive change notifications
through webhooks", "Reduce missing subscriptions and change notifications"):
POST /v1.0/subscriptions first validates notificationUrl and
lifecycleNotificationUrl (a POST ?validationToken=<random>, text/plain,
the echo must come back 200 within 10 seconds) and refuses the
subscription with 400 when either fails; expirationDateTime must lie in
the future and within MAX_MINUTES; clientState at most 128 characters.
PATCH renews, DELETE removes, POST .../reauthorize reauthorizes; an
expired or unknown subscription is 404. A message delivered to a folder a
subscription watches is announced by a POST of a change notification (with
the subscription's clientState) to its notificationUrl; tests send
lifecycle events with lifecycle(). The one concession: http notification
URLs on 127.0.0.1 are accepted (the test server has no certificate);
Graph requires https.
"""

import secrets
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import requests

MAX_MINUTES = 10080  # Outlook messages ("subscription resource type", maximum length of subscription)
RESOURCES = {"me/mailFolders('inbox')/messages": "inbox", "me/messages": None}


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _error(status: int, code: str, message: str):
    return status, {"error": {"code": code, "message": message}}


class SubscriptionsMixin:
    """Needs self.users, self.lock, self.access_tokens (FakeMicrosoft)."""

    def reset_subscriptions(self):
        self.subscriptions: dict[str, dict] = {}
        # Every POST the fake made to the portal: {"kind": "validation" | "notification" | "lifecycle",
        # "url", "status", "body" (what it sent), "answer" (the response text)}.
        self.posts_to_portal: list[dict] = []
        self.validation_echo_wrong = False  # test control: pretend the echo did not match

    # --- the portal talks to us ------------------------------------------------------------------------------
    def subscription_request(self, method: str, path: str, body: dict, headers) -> tuple:
        grant = self.access_tokens.get((headers.get("Authorization") or "").removeprefix("Bearer "))
        if grant is None or grant["expires"] < time.time():
            return _error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        user = self.users.get(grant["user"] or "")
        parts = path.removeprefix("/v1.0/subscriptions").strip("/").split("/")
        if method == "POST" and parts == [""]:
            return self._create_subscription(user, body)
        sub = self.subscriptions.get(parts[0])
        if sub is None or sub["user"] != user.address or self._expired(sub):
            return _error(404, "ResourceNotFound", f"The object was not found: {parts[0]}")
        if method == "DELETE" and len(parts) == 1:
            del self.subscriptions[parts[0]]
            return 204, None
        if method == "PATCH" and len(parts) == 1:
            expires, error = self._expiry(body.get("expirationDateTime"))
            if error:
                return error
            sub["expires"] = expires
            return 200, self._subscription_json(sub)
        if method == "POST" and parts[1:] == ["reauthorize"]:
            sub["needs_reauthorization"] = False
            sub["reauthorized"] += 1
            return 200, None
        return _error(405, "MethodNotAllowed", "Method not allowed.")

    def _expiry(self, raw):
        try:
            expires = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError:
            return None, _error(400, "InvalidRequest", "expirationDateTime is invalid.")
        now = datetime.now(timezone.utc)
        if expires <= now or expires > now + timedelta(minutes=MAX_MINUTES):
            return None, _error(400, "InvalidRequest",
                                "Subscription expiration can only be 10080 minutes in the future.")
        return expires, None

    def _create_subscription(self, user, body: dict):
        for name in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not body.get(name):
                return _error(400, "InvalidRequest", f"{name} is required.")
        if body["resource"] not in RESOURCES:
            return _error(400, "InvalidRequest", "Resource not supported.")
        if len(body.get("clientState") or "") > 128:
            return _error(400, "InvalidRequest", "clientState must be at most 128 characters.")
        expires, error = self._expiry(body["expirationDateTime"])
        if error:
            return error
        for url in filter(None, (body["notificationUrl"], body.get("lifecycleNotificationUrl"))):
            parts = urlsplit(url)
            if parts.scheme != "https" and parts.hostname != "127.0.0.1":
                return _error(400, "InvalidRequest", "The notification URL must use https.")
            if not self._validate(url):
                return _error(400, "ValidationError", "Subscription validation request failed. Notification "
                                                      "endpoint must respond with 200 OK to validation request.")
        sub = {"id": secrets.token_hex(16), "user": user.address, "resource": body["resource"],
               "changeType": body["changeType"], "notificationUrl": body["notificationUrl"],
               "lifecycleNotificationUrl": body.get("lifecycleNotificationUrl"), "clientState": body.get("clientState"),
               "expires": expires, "tenant": user.tenant.id, "reauthorized": 0}
        self.subscriptions[sub["id"]] = sub
        return 201, self._subscription_json(sub)

    def _validate(self, url: str) -> bool:
        """Graph's validation request; the lock is released meanwhile (the portal may call us back)."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {secrets.token_hex(8)}"
        self.lock.release()
        try:
            response = requests.post(url, params={"validationToken": token}, headers={"Content-Type": "text/plain"},
                                     timeout=10)
            record = {"kind": "validation", "url": url, "status": response.status_code, "answer": response.text,
                      "content_type": response.headers.get("Content-Type", "")}
        except requests.RequestException as error:
            record = {"kind": "validation", "url": url, "status": 0, "answer": type(error).__name__}
        finally:
            self.lock.acquire()
        self.posts_to_portal.append(record)
        echoed = record["status"] == 200 and record["answer"] == token and not self.validation_echo_wrong
        return echoed and record.get("content_type", "").startswith("text/plain")

    @staticmethod
    def _subscription_json(sub: dict) -> dict:
        return {"id": sub["id"], "resource": sub["resource"], "changeType": sub["changeType"],
                "notificationUrl": sub["notificationUrl"], "lifecycleNotificationUrl": sub["lifecycleNotificationUrl"],
                "expirationDateTime": _utc(sub["expires"]), "applicationId": "crm-portal-client",
                "clientState": sub["clientState"]}

    @staticmethod
    def _expired(sub: dict) -> bool:
        return sub["expires"] <= datetime.now(timezone.utc)

    # --- we talk to the portal ---------------------------------------------------------------------------------
    def notify_delivery(self, user, folder, message) -> list[dict]:
        """Announce a delivered message to every live subscription watching its folder (called by deliver)."""
        with self.lock:
            targets = [dict(s) for s in self.subscriptions.values()
                       if s["user"] == user.address and not self._expired(s)
                       and RESOURCES[s["resource"]] in (None, folder.well_known)]
        sent = []
        for sub in targets:
            message_id = f"imm-{message.number}"
            item = {"subscriptionId": sub["id"], "subscriptionExpirationDateTime": _utc(sub["expires"]),
                    "changeType": "created", "resource": f"Users/{user.oid}/Messages/{message_id}",
                    "resourceData": {"@odata.type": "#Microsoft.Graph.Message",
                                     "@odata.id": f"Users/{user.oid}/Messages/{message_id}", "id": message_id},
                    "clientState": sub["clientState"], "tenantId": sub["tenant"]}
            sent.append(self.post_to_portal("notification", sub["notificationUrl"], {"value": [item]}))
        return sent

    def lifecycle(self, subscription_id: str, event: str) -> dict:
        """Send a lifecycle event; subscriptionRemoved deletes the subscription first, as Graph has."""
        with self.lock:
            sub = dict(self.subscriptions[subscription_id])
            if event == "subscriptionRemoved":
                del self.subscriptions[subscription_id]
            if event == "reauthorizationRequired":
                self.subscriptions[subscription_id]["needs_reauthorization"] = True
        item = {"subscriptionId": sub["id"], "subscriptionExpirationDateTime": _utc(sub["expires"]),
                "tenantId": sub["tenant"], "clientState": sub["clientState"], "lifecycleEvent": event}
        return self.post_to_portal("lifecycle", sub["lifecycleNotificationUrl"], {"value": [item]})

    def post_to_portal(self, kind: str, url: str, body: dict) -> dict:
        """POST a notification batch as Graph does (JSON, 3 s budget); the record is kept in posts_to_portal."""
        try:
            response = requests.post(url, json=body, timeout=10)
            record = {"kind": kind, "url": url, "status": response.status_code, "body": body}
        except requests.RequestException as error:
            record = {"kind": kind, "url": url, "status": 0, "body": body, "answer": type(error).__name__}
        with self.lock:
            self.posts_to_portal.append(record)
        return record

    def expire_subscription(self, subscription_id: str, *, in_minutes: float = 0) -> None:
        """Move a subscription's expiry (0: it has expired; Graph then drops it and answers 404)."""
        with self.lock:
            self.subscriptions[subscription_id]["expires"] = datetime.now(timezone.utc) + timedelta(minutes=in_minutes)

