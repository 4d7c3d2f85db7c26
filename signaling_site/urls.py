"""URL map: the WHIP API, health, the demo page, the admin."""

from django.contrib import admin
from django.urls import include, path

from signaling_site.views import healthz, metrics

handler400 = "signaling_site.views.bad_request"
handler403 = "signaling_site.views.permission_denied"
handler404 = "signaling_site.views.page_not_found"
handler500 = "signaling_site.views.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("", include("calls.urls")),
    path("", include("dashboard.urls")),
]
