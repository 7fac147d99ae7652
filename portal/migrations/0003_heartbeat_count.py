from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("portal", "0002_user_profile")]

    operations = [
        migrations.AddField(model_name="heartbeat", name="count", field=models.PositiveIntegerField(default=0)),
    ]
