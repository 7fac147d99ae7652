"""The SOAP the fake EWS endpoint (tests.fakes.ews) answers with: the envelope, items, mailboxes, error
response messages and ErrorServerBusy's two forms."""

from datetime import datetime, timezone
from xml.sax.saxutils import escape, quoteattr

S = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
ENVELOPE = (
    f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{S}" xmlns:m="{M}" xmlns:t="{T}"><s:Header>'
    '<t:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" '
    'Version="V2017_07_11"/></s:Header><s:Body>{body}</s:Body></s:Envelope>'
)


def _content(item: dict, request) -> str:
    """Body and Attachments, when GetItem's AdditionalProperties ask for them (the message page does).

    item["body"] = ("HTML" | "Text", content); item["attachments"] = [(name, content type, size)].
    Attachments come as GetItem lists them: ids, names, types and sizes, never their Content.
    """
    asked = {uri.get("FieldURI") for uri in request.iter(f"{{{T}}}FieldURI")}
    extra = ""
    if "item:Body" in asked and item.get("body"):
        body_type, content = item["body"]
        extra += f'<t:Body BodyType="{body_type}">{escape(content)}</t:Body>'
    if "item:Attachments" in asked and item.get("attachments"):
        extra += "<t:Attachments>" + "".join(
            f'<t:FileAttachment><t:AttachmentId Id="{escape(item["id"])}-att{number}"/><t:Name>{escape(name)}</t:Name>'
            f"<t:ContentType>{escape(content_type)}</t:ContentType><t:Size>{size}</t:Size>"
            "<t:IsInline>false</t:IsInline></t:FileAttachment>"
            for number, (name, content_type, size) in enumerate(item["attachments"])
        ) + "</t:Attachments>"
    return extra


def _message(item: dict, extra: str = "") -> str:
    message_id = ""
    if item["message_id"]:
        message_id = f"<t:InternetMessageId>{escape(item['message_id'])}</t:InternetMessageId>"
    sent = f"<t:DateTimeSent>{_when(item['sent'])}</t:DateTimeSent>" if item.get("sent") else ""
    author = _mailbox(item.get("sender_name", "Kunde"), item["sender"])
    recipients = "".join(
        f"<t:{tag}>{''.join(_mailbox(name, address) for name, address in item[key])}</t:{tag}>"
        for key, tag in (("to", "ToRecipients"), ("cc", "CcRecipients")) if item.get(key)
    )
    return (
        f'<t:Message><t:ItemId Id={quoteattr(item["id"])} ChangeKey="ck"/>'
        f"<t:Subject>{escape(item['subject'])}</t:Subject>"
        f"<t:DateTimeReceived>{_when(item['received'])}</t:DateTimeReceived><t:Size>{item['size']}</t:Size>{sent}"
        f"<t:Sender>{author}</t:Sender>{recipients}<t:From>{author}</t:From>{message_id}{extra}</t:Message>"
    )


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mailbox(name: str, address: str) -> str:
    return (f"<t:Mailbox><t:Name>{escape(name)}</t:Name><t:EmailAddress>{escape(address)}</t:EmailAddress>"
            "<t:RoutingType>SMTP</t:RoutingType></t:Mailbox>")


def _error(operation: str, code: str, text: str, extra: str = "") -> str:
    return (
        f'<m:{operation}ResponseMessage ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
        f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
        f"{extra}</m:{operation}ResponseMessage>"
    )


def _back_off_xml(milliseconds: int) -> str:
    return f'<m:MessageXml><t:Value Name="BackOffMilliseconds">{milliseconds}</t:Value></m:MessageXml>'


def _busy_fault(milliseconds: int) -> str:
    """ErrorServerBusy as a SOAP fault, as "EWS throttling in Exchange" shows it (sent with HTTP 500)."""
    text = "The server cannot service this request right now. Try again later."
    errors = "http://schemas.microsoft.com/exchange/services/2006/errors"
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{S}"><s:Body><s:Fault>'
        f'<faultcode xmlns:a="{T}">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">{text}</faultstring>'
        f'<detail><e:ResponseCode xmlns:e="{errors}">ErrorServerBusy</e:ResponseCode>'
        f'<e:Message xmlns:e="{errors}">{text}</e:Message><t:MessageXml xmlns:t="{T}">'
        f'<t:Value Name="BackOffMilliseconds">{milliseconds}</t:Value></t:MessageXml></detail>'
        "</s:Fault></s:Body></s:Envelope>"
    )
