from django import forms
from django.utils.translation import gettext_lazy as _

from migration.exchange.flow import AUTO
from migration.forms import MailboxForm
from sync import egress
from sync.certificates import MAX_PEM_CHARS, NotCertificates, certificates_only
from sync.exchange import client as ews


class ExchangeCredentialsForm(MailboxForm):
    server = forms.CharField(
        label=_("Exchange-Server oder EWS-Adresse"), max_length=500,
        help_text=_("z. B. mail.firma.de oder https://mail.firma.de/EWS/Exchange.asmx"),
    )
    username = forms.CharField(
        label=_("Benutzername"), max_length=255,
        help_text=_("DOMÄNE\\benutzer oder benutzer@firma.de, wie bei der Windows-Anmeldung"),
    )
    auth_type = forms.ChoiceField(label=_("Anmeldeverfahren"), initial=AUTO, choices=[
        (AUTO, _("Automatisch")), ("ntlm", "NTLM"), ("basic", "Basic"),
    ])
    ca_pem = forms.CharField(
        label=_("Eigenes CA-Zertifikat (PEM, optional)"), required=False, max_length=MAX_PEM_CHARS,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text=_("Nur nötig, wenn der Server ein Zertifikat Ihrer eigenen Zertifizierungsstelle hat: "
                    "den Inhalt der .pem- oder .crt-Datei einfügen. Die Prüfung des Zertifikats wird nie abgeschaltet."),
    )
    host_field = "server"
    fill_order = ["address", "server", "username", "password"]
    field_order = ["address", "password", "server", "username", "auth_type", "ca_pem", "confirm_host"]

    def clean_server(self):
        try:
            return ews.ews_url_for(self.cleaned_data["server"])
        except (ValueError, egress.EgressRefused):
            raise forms.ValidationError(
                _("Bitte geben Sie einen Servernamen wie mail.firma.de oder eine https-Adresse ein.")) from None

    def clean_username(self):
        return self.cleaned_data["username"].strip()

    def clean_ca_pem(self):
        """The certificates only, re-encoded; a private key is refused (and not shown back)."""
        try:
            return certificates_only(self.cleaned_data["ca_pem"])
        except NotCertificates as refused:
            if refused.reason == "private_key":
                # The page comes back with the error: it must not carry the key back either.
                self.data = self.data.copy()
                self.data[self.add_prefix("ca_pem")] = ""
            raise forms.ValidationError(refused.message) from None

    def target_host(self) -> str:
        try:
            return egress.split_url(ews.ews_url_for(self.data.get(self.add_prefix("server")) or ""))[1].lower()
        except (ValueError, egress.EgressRefused):
            return ""

    def connection(self) -> dict:
        data = self.cleaned_data
        return {"ews_url": data["server"], "username": data["username"], "auth_type": data["auth_type"],
                "ca_pem": data["ca_pem"]}
