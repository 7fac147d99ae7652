from django.conf import settings
from django.utils.functional import SimpleLazyObject

from portal.banner import banner_for


def banner(request):
    # Lazy: pages without the shell (JSON, admin) never compute it.
    return {
        "v2_banner": SimpleLazyObject(lambda: banner_for(request.user) or ""),
        "signup_open": settings.ACCOUNT_ALLOW_SIGNUP,
    }
