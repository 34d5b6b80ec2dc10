from django.urls import path

from controlplane.orgs import views

app_name = "orgs"

urlpatterns = [
    path("orgs/", views.org_list, name="list"),
    path("orgs/-/switch/", views.org_switch, name="switch"),  # "-" is never a slug
    path("orgs/<slug:slug>/", views.org_detail, name="detail"),
    path("orgs/<slug:slug>/settings/", views.org_settings, name="settings"),
    path("orgs/<slug:slug>/members/", views.member_add, name="member-add"),
    path("orgs/<slug:slug>/members/<int:user_id>/", views.member_change, name="member-change"),
]
