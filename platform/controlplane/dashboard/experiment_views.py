"""Experiments: runs grouped by name, and a compare view that overlays their curves."""

from __future__ import annotations

from django.db.models import Count, Max
from django.shortcuts import render

from controlplane.api.params import page_text_param
from controlplane.dashboard.access import project_page
from controlplane.jobs.models import Job
from controlplane.jobs.selectors import charts_for

MAX_COMPARED = 8


@project_page()
def experiment_compare(request, project):
    experiments = (
        Job.objects.filter(project=project)
        .exclude(experiment="")
        .values("experiment")
        .annotate(runs=Count("id"), last=Max("created_at"))
        .order_by("-last")
    )
    chosen_name = page_text_param(request, "experiment") or ""
    candidates = (
        Job.objects.filter(project=project, metrics__isnull=False).distinct().order_by("-id")
    )
    if chosen_name:
        candidates = candidates.filter(experiment=chosen_name)
    candidates = list(candidates.select_related("created_by")[:50])
    # isascii too: "²".isdigit() is True but int("²") raises.
    wanted = {int(i) for i in request.GET.getlist("jobs") if i.isascii() and i.isdigit()}
    compared = [job for job in candidates if job.pk in wanted] or candidates[:MAX_COMPARED]
    compared = compared[:MAX_COMPARED]
    context = {
        "project": project,
        "experiments": experiments,
        "chosen_name": chosen_name,
        "candidates": candidates,
        "compared_ids": {job.pk for job in compared},
        "charts": charts_for(compared),
    }
    return render(request, "dashboard/experiments.html", context)
