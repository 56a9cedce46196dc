from django.urls import path

from . import views

urlpatterns = [
    path("documents/", views.library, name="documents-library"),
    path("documents/upload", views.upload, name="documents-upload"),
    path("documents/<uuid:document_id>/", views.detail, name="documents-detail"),
    path("documents/<uuid:document_id>/delete", views.delete, name="documents-delete"),
    path("api/documents/", views.api_documents, name="documents-api"),
]
