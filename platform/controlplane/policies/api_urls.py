"""The policies app's API routes, included under /api/v1/ (api/urls.py): the policy and
its versions (api.py), waivers and holds (api_compliance.py), violations and scans
(api_violations.py)."""

from controlplane.policies.api import urlpatterns as policy_urls
from controlplane.policies.api_compliance import urlpatterns as compliance_urls
from controlplane.policies.api_violations import urlpatterns as violation_urls

urlpatterns = [*policy_urls, *compliance_urls, *violation_urls]
