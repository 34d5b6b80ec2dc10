from django.urls import path

from controlplane.registry import actions, views

MODEL = "projects/<int:project_id>/models/<str:name>/"
VERSION = MODEL + "v<int:number>/"

urlpatterns = [
    path("projects/<int:project_id>/models/", views.model_list, name="registry-models"),
    path(MODEL, views.model_detail, name="registry-model"),
    path(MODEL + "edit/", actions.model_edit, name="registry-model-edit"),
    path(MODEL + "aliases/", actions.alias_move, name="registry-alias-move"),
    path(VERSION, views.version_detail, name="registry-version"),
    path(VERSION + "card.md", views.version_card, name="registry-version-card"),
    path(VERSION + "archive.tar", views.version_archive, name="registry-version-archive"),
    path(VERSION + "edit/", actions.version_edit, name="registry-version-edit"),
    path(VERSION + "delete/", actions.version_delete, name="registry-version-delete"),
    path(VERSION + "evaluate/", actions.version_evaluate, name="registry-version-evaluate"),
    path(VERSION + "retrain/", actions.version_retrain, name="registry-version-retrain"),
    path("projects/<int:project_id>/reviews/", views.review_queue, name="registry-reviews"),
    path(
        "projects/<int:project_id>/reviews/settings/",
        actions.registry_settings_edit,
        name="registry-settings",
    ),
    path(
        "projects/<int:project_id>/reviews/<int:request_id>/decide/",
        actions.promotion_decide,
        name="registry-promotion-decide",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/register/",
        actions.register,
        name="registry-register",
    ),
]
