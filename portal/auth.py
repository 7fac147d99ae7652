from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings


class AccountAdapter(DefaultAccountAdapter):
    """Users are created by staff or by a command; sign-up only if enabled."""

    def is_open_for_signup(self, request):
        return settings.ACCOUNT_ALLOW_SIGNUP
