from dataclasses import asdict

from django import forms
from django.utils.translation import gettext_lazy as _

from sync.imap.client import ImapSettings
from sync.models import Security


class MailboxForm(forms.Form):
    """What every login step asks: the account's address, the password, and
    (like Thunderbird) a yes before credentials go to a detected server outside
    the user's own domain."""

    address = forms.EmailField(label=_("E-Mail-Adresse"))
    password = forms.CharField(label=_("Passwort"), widget=forms.PasswordInput(render_value=False), max_length=1024)
    confirm_host = forms.BooleanField(label=_("Ich vertraue diesem Server"), required=False)
    fill_order: list[str] = []  # the order the template shows the fields in, when it differs from field_order

    def __init__(self, *args, account, stranger: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.account = account
        # The detected server outside the user's domain, if the step proposed one.
        self.stranger = stranger
        if not self.is_bound:
            # The cursor starts where there is something to type (usually the password; the rest is prefilled).
            # A form sent back with errors is focused on its first invalid field by static/js/forms.js instead.
            empty = [name for name in self.fill_order or self.fields
                     if self.fields[name].required and not self.initial.get(name, self.fields[name].initial)]
            if empty:
                self.fields[empty[0]].widget.attrs["autofocus"] = True

    def clean_address(self):
        address = self.cleaned_data["address"].strip()
        if address.lower() != self.account.address.lower():
            raise forms.ValidationError(_("Bitte geben Sie die Adresse dieses Kontos ein: %(address)s"),
                                        params={"address": self.account.address})
        return address

    def target_host(self) -> str:
        raise NotImplementedError

    @property
    def asks_confirmation(self) -> bool:
        if not self.stranger:
            return False
        host = self.target_host() if self.is_bound and not self.errors.get(self.host_field) else self.stranger
        return host == self.stranger

    def clean(self):
        data = super().clean()
        if self.asks_confirmation and not data.get("confirm_host"):
            self.add_error("confirm_host", forms.ValidationError(
                _("Der vorgeschlagene Server %(host)s gehört nicht zu Ihrer E-Mail-Domain. Bitte bestätigen "
                  "Sie, dass Ihr Passwort dorthin gesendet werden darf, oder tragen Sie einen anderen Server ein."),
                params={"host": self.stranger}))
        return data


class ImapCredentialsForm(MailboxForm):
    host = forms.CharField(label=_("IMAP-Server"), max_length=255)
    port = forms.IntegerField(label=_("Port"), min_value=1, max_value=65535,
                              help_text=_("993 mit SSL/TLS (fast immer richtig) oder 143 mit STARTTLS."))
    security = forms.ChoiceField(label=_("Verschlüsselung"), choices=Security.choices)
    username = forms.CharField(label=_("Benutzername"), max_length=255)
    host_field = "host"
    field_order = ["address", "password", "host", "port", "security", "username", "confirm_host"]

    def clean_host(self):
        host = self.cleaned_data["host"].strip().rstrip(".").lower()
        if not host or any(char in host for char in " /\\@:?#") and not host.startswith("["):
            raise forms.ValidationError(_("Bitte geben Sie einen Servernamen wie imap.example.com ein."))
        return host

    def target_host(self) -> str:
        return (self.data.get(self.add_prefix("host")) or "").strip().rstrip(".").lower()

    def server(self) -> ImapSettings:
        data = self.cleaned_data
        return ImapSettings(data["host"], data["port"], data["security"], data["username"].strip())

    def connection(self) -> dict:
        return asdict(self.server())
