from django.apps import AppConfig


class RelaysConfig(AppConfig):
    name = "relays"
    verbose_name = "Relay shards"
