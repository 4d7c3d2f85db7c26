from django.urls import path

from calls import views

urlpatterns = [
    path("v1/sessions", views.sessions_collection, name="sessions"),
    path("v1/sessions/<uuid:session_id>", views.session_resource, name="session"),
    path("v1/regions", views.regions_collection, name="regions"),
]
