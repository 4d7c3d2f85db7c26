from django.urls import path, register_converter

from dashboard import views


class NodeKindConverter:
    regex = "relay|transceiver"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(NodeKindConverter, "nodekind")

urlpatterns = [
    path("", views.demo_page, name="demo"),
    path("dashboard/", views.dashboard_page, name="dashboard"),
    path("dashboard/regions/<slug:code>/enabled", views.region_enabled, name="region-enabled"),
    path(
        "dashboard/nodes/<nodekind:kind>/<int:node_id>/drain",
        views.node_drain,
        name="node-drain",
    ),
]
