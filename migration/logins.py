"""Logins created by operators (add_user) and by the demo (demo_data)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.db import transaction


def save_login(*, email: str, password: str, staff: bool = False, superuser: bool = False, validate: bool = True):
    """Create or update the login whose username is the e-mail address; return (user, created).

    Rights are only ever added: re-running without --staff must not silently
    demote a support account (that is an explicit act in the admin).
    Raises django.core.exceptions.ValidationError for a weak password.
    """
    User = get_user_model()
    with transaction.atomic():
        # Case-insensitive: "Anna@Example.com" and "anna@example.com" are one person to allauth.
        user = User.objects.select_for_update().filter(username__iexact=email).first()
        created = user is None
        if created:
            user = User(username=email, email=email)
        if validate:
            validate_password(password, user)
        user.email = user.email or email
        user.set_password(password)
        user.is_active = True
        user.is_staff = user.is_staff or staff or superuser
        user.is_superuser = user.is_superuser or superuser
        user.save()
    return user, created
