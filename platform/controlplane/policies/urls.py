"""The policies app's pages."""

urlpatterns: list = []
