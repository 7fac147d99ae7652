"""A V3 account whose mailbox refused the stored password: the user enters the new one.

The sync stops after one refusal (see sync.services.record_v3_failure); this
page stores the new password encrypted and queues a sync that checks it. A
wrong password again simply puts the account back into "Neu verbinden" after
that one attempt. Microsoft accounts re-connect through their own sign-in.
"""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters

from migration import errors
from sync import egress
from sync import services as sync_services
from sync.models import AccountStatus, Engine, MailAccount, ProviderKind


class NewPasswordForm(forms.Form):
    password = forms.CharField(label=_("Neues Passwort"),
                               widget=forms.PasswordInput(render_value=False, attrs={"autofocus": True}),
                               max_length=1024)


@sensitive_post_parameters("password")
@login_required
def new_password(request, account_id: int):
    account = get_object_or_404(MailAccount, pk=account_id, owner=request.user, engine=Engine.V3,
                                provider_kind__in=[ProviderKind.IMAP, ProviderKind.EXCHANGE])
    if account.status != AccountStatus.RECONNECT:
        return redirect("settings-mail")
    form = NewPasswordForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            egress.check_rate(request.user.pk, *egress.destination(
                url=account.ews_url if account.provider_kind == ProviderKind.EXCHANGE else "",
                host=account.imap_host, port=account.imap_port))
        except egress.RateLimited:
            form.add_error(None, errors.message_for("rate_limited"))
            status = 429
        else:
            sync_services.replace_password(account_id=account.pk, password=form.cleaned_data["password"])
            messages.success(request, _("Das neue Passwort ist gespeichert. Die Synchronisierung prüft es jetzt."))
            return redirect("settings-mail")
    elif request.method == "POST":
        status = 400
    return render(request, "migration/new_password.html", {
        "account": account, "form": form, "error_message": errors.message_for(account.last_sync_error),
        "nav": "settings",
    }, status=status)
