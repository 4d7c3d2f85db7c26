"""Pages: the demo at ``/`` and the staff dashboard with its two actions. Thin: parse, call a
service, redirect."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from dashboard.selectors import fleet_snapshot
from dashboard.services import NodeKind, node_set_draining
from geo.models import Region
from geo.selectors import regions_enabled
from geo.services import regions_set_enabled


@require_GET
def demo_page(request: HttpRequest) -> HttpResponse:
    """One-click call to the echo agent; the region select pins ``?region=``."""
    return render(request, "demo.html", {"regions": list(regions_enabled())})


@staff_member_required
@require_GET
def dashboard_page(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard.html", {"snapshot": fleet_snapshot()})


@staff_member_required
@require_POST
def region_enabled(request: HttpRequest, code: str) -> HttpResponse:
    if not Region.objects.filter(code=code).exists():
        raise Http404("no such region")
    enabled = request.POST.get("enabled") == "1"
    regions_set_enabled(codes=[code], enabled=enabled)
    messages.success(request, f"Region {code} {'enabled' if enabled else 'disabled'}.")
    return redirect("dashboard")


@staff_member_required
@require_POST
def node_drain(request: HttpRequest, kind: NodeKind, node_id: int) -> HttpResponse:
    draining = request.POST.get("drain") == "1"
    who = request.user.get_username()
    try:
        changed = node_set_draining(
            kind=kind, node_id=node_id, draining=draining,
            reason=f"{'drained' if draining else 'resumed'} by {who} from the dashboard",
        )
    except ObjectDoesNotExist:
        raise Http404("no such node") from None
    except ValidationError as exc:
        messages.error(request, f"Could not change {kind} {node_id}: {exc}")
        return redirect("dashboard")
    verb = "is draining" if draining else "resumed"
    messages.success(request, f"{kind.capitalize()} {node_id} {verb}." if changed else "No change.")
    return redirect("dashboard")
