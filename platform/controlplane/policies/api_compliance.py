"""Waivers, erasure holds, violations and scans through the API."""

urlpatterns: list = []
