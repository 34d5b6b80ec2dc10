"""The finops pages (namespace "finops")."""

from django.urls import path

from controlplane.finops import views

app_name = "finops"

urlpatterns = [
    path("orgs/<slug:slug>/rate-card/", views.rate_card, name="rate-card"),
    path("orgs/<slug:slug>/webhook/", views.webhook, name="webhook"),
    path("projects/<int:project_id>/budget/", views.project_budget, name="project-budget"),
]
