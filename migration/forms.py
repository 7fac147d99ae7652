from django import forms
from django.utils.translation import gettext_lazy as _

from sync.imap import ImapSettings
from sync.models import Security


class ImapCredentialsForm(forms.Form):
    address = forms.EmailField(label=_("E-Mail-Adresse"))
    password = forms.CharField(label=_("Passwort"), widget=forms.PasswordInput(render_value=False), max_length=1024)
    host = forms.CharField(label=_("IMAP-Server"), max_length=255)
    port = forms.IntegerField(label=_("Port"), min_value=1, max_value=65535)
    security = forms.ChoiceField(label=_("Verschlüsselung"), choices=Security.choices)
    username = forms.CharField(label=_("Benutzername"), max_length=255)

    def __init__(self, *args, account, **kwargs):
        super().__init__(*args, **kwargs)
        self.account = account

    def clean_address(self):
        address = self.cleaned_data["address"].strip()
        if address.lower() != self.account.address.lower():
            raise forms.ValidationError(_("Bitte geben Sie die Adresse dieses Kontos ein: %(address)s"),
                                        params={"address": self.account.address})
        return address

    def clean_host(self):
        host = self.cleaned_data["host"].strip().rstrip(".").lower()
        if not host or any(char in host for char in " /\\@:?#") and not host.startswith("["):
            raise forms.ValidationError(_("Bitte geben Sie einen Servernamen wie imap.example.com ein."))
        return host

    def server(self) -> ImapSettings:
        data = self.cleaned_data
        return ImapSettings(data["host"], data["port"], data["security"], data["username"].strip())
