from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render

from sync.selectors import messages_for_user


@login_required
def message_list(request):
    paginator = Paginator(messages_for_user(request.user), settings.MESSAGES_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    return render(request, "sync/message_list.html", {"page": page, "nav": "emails"})
