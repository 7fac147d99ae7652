"""A user's own choices the portal needs outside a request: the language of their e-mails, reminders on/off.

The DE/EN switch in the page header stores the language here as well as in
the browser's cookie (portal.views.set_language), so a mail sent by a worker
at night speaks the language the user last chose. Every mail to a user is
rendered inside in_language_of(user).
"""

from contextlib import contextmanager

from django.conf import settings
from django.utils import translation

from portal.models import UserProfile


def valid_language(code: str) -> bool:
    """Whether code is one of settings.LANGUAGES ("de", "en")."""
    return code in dict(settings.LANGUAGES)


def chosen_language(user) -> str:
    """The language the user chose ("" if they never did). One query (none if cached on the instance)."""
    profile = _profile(user)
    return profile.language if profile and valid_language(profile.language) else ""


def language_of(user) -> str:
    """The language code for mails to user: their choice, else settings.LANGUAGE_CODE."""
    return chosen_language(user) or settings.LANGUAGE_CODE


def languages_of(user_ids) -> dict[int, str]:
    """user id -> language code for many users in one query (users without a choice get the default)."""
    chosen = dict(UserProfile.objects.filter(user_id__in=list(user_ids)).exclude(language="")
                  .values_list("user_id", "language"))
    return {pk: chosen[pk] if valid_language(chosen.get(pk, "")) else settings.LANGUAGE_CODE for pk in user_ids}


@contextmanager
def in_language_of(user):
    """Render mails (gettext, date formats) in the user's language inside this block."""
    with translation.override(language_of(user)):
        yield


def wants_reminders(user) -> bool:
    profile = _profile(user)
    return profile.campaign_reminders if profile else True


def set_language(*, user, language: str) -> None:
    """Remember the user's language (ValueError for a code not in settings.LANGUAGES)."""
    if not valid_language(language):
        raise ValueError(f"unknown language {language!r}")
    UserProfile.objects.update_or_create(user=user, defaults={"language": language})
    _forget(user)


def set_reminders(*, user, enabled: bool) -> None:
    """Turn the campaign's reminder e-mails on or off for the user (the settings page, the unsubscribe link)."""
    UserProfile.objects.update_or_create(user=user, defaults={"campaign_reminders": enabled})
    _forget(user)


def _profile(user) -> UserProfile | None:
    # user.portal_profile raises when there is no row; a fresh query after set_* (see _forget).
    try:
        return user.portal_profile
    except UserProfile.DoesNotExist:
        return None


def _forget(user) -> None:
    # Django caches the reverse one-to-one on the instance, also its absence.
    user._state.fields_cache.pop("portal_profile", None)
