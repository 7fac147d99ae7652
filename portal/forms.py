from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _


class NotificationSettingsForm(forms.Form):
    """The user's e-mail settings: the language of the portal's mails, and the campaign's reminders."""

    language = forms.ChoiceField(label=_("Sprache der E-Mails"), choices=settings.LANGUAGES)
    campaign_reminders = forms.BooleanField(
        label=_("Erinnerungen an die Migration zu V3 per E-Mail erhalten"), required=False,
        help_text=_("Nachrichten, dass ein Postfach nicht mehr synchronisiert wird, und die Bestätigung einer "
                    "abgeschlossenen Migration erhalten Sie immer."),
    )
