"""URL map: the WHIP API, health, the demo page, the admin."""

from django.contrib import admin
from django.urls import include, path

from signaling_site.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("", include("calls.urls")),
    path("", include("dashboard.urls")),
]
