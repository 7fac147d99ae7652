from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from sync.bodies import BodyUnavailable, body_for, message_for
from sync.models import SyncedMessage
from sync.sanitize import has_blocked_images, with_remote_images
from sync.selectors import messages_for_user

# The message page shows HTML from strangers (sanitized): the browser is told to run no
# script but ours, load nothing from elsewhere (images only once the user asks) and never
# tell a linked site which CRM page the link was on.
MESSAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:{remote}; object-src 'none'; "
    "frame-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@login_required
def message_list(request):
    paginator = Paginator(messages_for_user(request.user), settings.MESSAGES_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    return render(request, "sync/message_list.html", {"page": page, "nav": "emails"})


def _get_message_for_user(user, pk: int) -> SyncedMessage:
    """The user's own message; anyone else's is a 404, exactly like one that does not exist."""
    return get_object_or_404(SyncedMessage.objects.select_related("account"), pk=pk, account__owner=user)


@login_required
def message_detail(request, pk: int):
    """Headers from the store; body and attachments from the cache or, on the first open, the provider.

    ?images=1 shows the remote images of this one view; nothing is remembered.
    """
    message = _get_message_for_user(request.user, pk)
    body, error = None, ""
    try:
        body = body_for(message)
    except BodyUnavailable as unavailable:
        error = message_for(unavailable.code)
    show_images = request.GET.get("images") == "1"
    html = ""
    if body is not None and body.html:
        html = with_remote_images(body.html) if show_images else body.html
    response = render(request, "sync/message_detail.html", {
        "message": message, "body": body, "error": error, "html": html, "show_images": show_images,
        "images_blocked": not show_images and body is not None and has_blocked_images(body.html), "nav": "emails",
    })
    response["Content-Security-Policy"] = MESSAGE_CSP.format(remote=" https: http:" if show_images else "")
    response["Referrer-Policy"] = "no-referrer"
    return response
