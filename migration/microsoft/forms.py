from django import forms
from django.utils.translation import gettext_lazy as _


class AdminEmailForm(forms.Form):
    email = forms.EmailField(label=_("E-Mail-Adresse Ihres Administrators"), max_length=254)
