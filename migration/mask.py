"""The login mask ("Anmeldemaske"): provider picker and the way back.

Every step of the login has a "Zurück" that leads to the picker: "Weiter mit
Microsoft" or "Alle Anbieter anzeigen", and the full list from there. Choosing
a provider changes what the migration asks for next; it is not a status
change, but it is recorded in the event trail for support staff.
"""

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from migration import errors, proposal, selectors, services
from migration.google import flow as google_flow
from migration.models import Migration, MigrationEvent, Status
from sync.google import oauth as google_oauth
from sync.microsoft import client as microsoft_client
from sync.models import ProviderKind
from sync.providers import IMAP_PROVIDERS


@dataclass(frozen=True)
class Choice:
    key: str
    label: str
    kind: str


# Google's IMAP entry of the table is the app-password fallback (personal Gmail with 2-Step Verification).
_IMAP_LABELS = {"google": _("Gmail mit App-Passwort (IMAP)"),
                "telekom_business": _("Telekom Homepage Center (Geschäftskunden)")}
CHOICES = [
    Choice("google_signin", _("Google (Gmail, Google Workspace)"), ProviderKind.GOOGLE),
    Choice("microsoft365", _("Microsoft 365 / Outlook.com"), ProviderKind.MICROSOFT),
    Choice("exchange", _("Microsoft Exchange"), ProviderKind.EXCHANGE),
    *[Choice(p.key, _IMAP_LABELS.get(p.key, p.label), ProviderKind.IMAP) for p in IMAP_PROVIDERS.values()],
    Choice("imap_other", _("Anderer IMAP-Anbieter"), ProviderKind.IMAP),
]
CHOICES_BY_KEY = {choice.key: choice for choice in CHOICES}
# Steps of the mask where the provider may still be changed.
CHOOSABLE = [Status.AWAITING_USER, Status.AWAITING_ADMIN_CONSENT]


class ChoiceRefused(Exception):
    pass


def unavailable() -> dict:
    """{choice key: why it cannot be used here}: said on the button, before anyone is sent to the provider."""
    reasons = {}
    if not microsoft_client.configured():
        reasons["microsoft365"] = errors.message_for("ms_not_configured")
    if not google_oauth.configured():
        reasons["google_signin"] = errors.message_for("google_not_configured")
    return reasons


def choose_provider(*, migration: Migration, key: str, actor: str, reason: str = "", extra: dict | None = None
                    ) -> Migration:
    """Switch the login step to another provider (compare-and-swap on the step).

    reason: what the event trail says (default "provider chosen: <key>"); extra: facts merged
    into Migration.detected (e.g. {"exchange_online": True} for the Microsoft step's explanation).
    The previous login's error goes with it: a refused Google sign-in must not greet the user
    again on the IMAP form, nor after they come back to Google."""
    reason = reason or f"provider chosen: {key}"
    choice = CHOICES_BY_KEY.get(key)
    if choice is None or migration.status not in CHOOSABLE:
        raise ChoiceRefused(key)
    detected = {**proposal.for_choice(migration.account, dict(migration.detected or {}), key, choice.kind),
                **(extra or {})}
    if migration.status == Status.AWAITING_ADMIN_CONSENT and choice.kind != ProviderKind.MICROSOFT:
        # Leaving the wait for a Microsoft admin: the new provider's step is a plain login step.
        try:
            return services.transition(migration, to=Status.AWAITING_USER, reason=reason, actor=actor,
                                       provider_kind=choice.kind, detected=detected, connection={}, error_code="")
        except services.TransitionConflict:
            raise ChoiceRefused(key) from None
    with transaction.atomic():
        changed = Migration.objects.filter(pk=migration.pk, status=migration.status).update(
            provider_kind=choice.kind, detected=detected, connection={}, error_code=""
        )
        if not changed:
            raise ChoiceRefused(key)
        MigrationEvent.objects.create(
            migration=migration, from_status=migration.status, to_status=migration.status,
            reason=reason, actor=actor,
        )
    migration.refresh_from_db()
    return migration


@login_required
def picker(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    if migration.status not in CHOOSABLE:
        return redirect("migration-detail", pk=pk)  # a finished or running migration has no login step
    return render(request, "migration/mask/picker.html",
                  {"migration": migration, "nav": "settings", "unavailable": unavailable()})


@login_required
def all_providers(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    if migration.status not in CHOOSABLE:
        return redirect("migration-detail", pk=pk)
    return render(request, "migration/mask/all_providers.html",
                  {"migration": migration, "choices": CHOICES, "nav": "settings", "unavailable": unavailable()})


@login_required
@require_POST
def choose(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    try:
        choose_provider(migration=migration, key=request.POST.get("provider", ""), actor=f"user:{request.user.pk}")
    except ChoiceRefused:
        messages.error(request, _("Dieser Anbieter kann in diesem Schritt nicht gewählt werden."))
    else:
        # A Google sign-in still open in another tab belongs to the step the user just left.
        google_flow.forget(session=request.session, purpose=f"m{migration.pk}")
    return redirect("migration-detail", pk=pk)
