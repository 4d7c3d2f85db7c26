from django.urls import path

from calls import views

urlpatterns = [
    path("v1/sessions", views.sessions_collection, name="sessions"),
    path("v1/sessions/<uuid:session_id>", views.session_resource, name="session"),
    path("v1/client_secrets", views.client_secrets_collection, name="client-secrets"),
    path("v1/regions", views.regions_collection, name="regions"),
    path("v1/openapi.json", views.openapi_view, name="openapi"),
    path("v1/docs", views.docs_page, name="api-docs"),
]
