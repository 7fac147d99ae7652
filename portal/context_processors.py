from django.conf import settings
from django.utils.functional import SimpleLazyObject

from portal.banner import banner_for


def banner(request):
    # Lazy: pages without the shell (JSON, admin) never compute it.
    return {
        # The banner's cache entries came with the user's (portal.user_cache): no round trip of its own.
        "v2_banner": SimpleLazyObject(lambda: banner_for(request.user, getattr(request, "prefetched_cache", None)) or ""),
        "signup_open": settings.ACCOUNT_ALLOW_SIGNUP,
    }
