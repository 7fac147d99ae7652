# Exchange on-premises (EWS): connection fields on the account, the sync state per folder.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("sync", "0002_microsoft"),
    ]

    operations = [
        migrations.AddField(
            model_name="mailaccount",
            name="ews_url",
            field=models.CharField(blank=True, max_length=500, verbose_name="EWS-Adresse"),
        ),
        migrations.AddField(
            model_name="mailaccount",
            name="ews_auth_type",
            field=models.CharField(blank=True, max_length=10, verbose_name="EWS-Anmeldeverfahren"),
        ),
        migrations.AddField(
            model_name="mailaccount",
            name="tls_ca_pem",
            field=models.TextField(blank=True, verbose_name="Eigenes CA-Zertifikat (PEM)"),
        ),
        migrations.AddField(
            model_name="folderstate",
            name="ews_sync_state",
            field=models.TextField(blank=True),
        ),
    ]
