from django.apps import AppConfig


class TransceiversConfig(AppConfig):
    name = "transceivers"
    verbose_name = "Transceivers"
