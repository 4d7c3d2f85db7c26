from django.templatetags.static import static
from django.urls import path, register_converter
from django.views.generic import RedirectView

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
    # Browsers ask for it on pages without a <link rel=icon> (the admin): no 404 in the console.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("demo/client_secret", views.demo_client_secret, name="demo-client-secret"),
    path("dashboard/", views.dashboard_page, name="dashboard"),
    path("dashboard/regions/<slug:code>/enabled", views.region_enabled, name="region-enabled"),
    path(
        "dashboard/nodes/<nodekind:kind>/<int:node_id>/drain",
        views.node_drain_or_resume,
        name="node-drain",
    ),
]
