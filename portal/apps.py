from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"

    def ready(self):
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from portal import prepared
        from portal.user_cache import forget_saved_user

        prepared.connect()

        # Cache invalidation, not business logic: the admin, allauth and Django's own views save users
        # in places no service of ours wraps (portal/user_cache.py).
        user_model = get_user_model()
        post_save.connect(forget_saved_user, sender=user_model, dispatch_uid="portal.user_cache.save")
        post_delete.connect(forget_saved_user, sender=user_model, dispatch_uid="portal.user_cache.delete")
