"""The policy and its versions through the API."""

urlpatterns: list = []
