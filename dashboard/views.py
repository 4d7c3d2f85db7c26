"""Pages: the demo at ``/`` and the staff dashboard with its two actions. Thin: parse, call a
service, redirect."""

from __future__ import annotations

import math

import redis
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from access.rules import Denied
from access.services import client_secret_mint_demo
from calls.problems import problem
from calls.ratelimit import burst_for, client_key, take_token
from calls.views import denied, minted_json
from dashboard.selectors import fleet_snapshot
from fleet.nodes import NodeKind
from geo.client_ip import client_ip_of
from geo.models import Region
from geo.selectors import regions_enabled
from geo.services import regions_set_enabled
from health.services import node_drain, node_resume


@require_GET
def demo_page(request: HttpRequest) -> HttpResponse:
    """One-click call to the echo agent; the region select pins ``?region=``. When the API needs
    a token and the open demo is on, the page first gets a client secret from this site."""
    secret_url = reverse("demo-client-secret") if (
        settings.AUTH_REQUIRED and settings.DEMO_OPEN) else None
    return render(request, "demo.html", {"regions": list(regions_enabled()),
                                         "client_secret_url": secret_url})


# No CSRF token: the answer carries no CORS headers, so only this site's pages can read the
# secret; the per-address bucket is what bounds everyone else.
@csrf_exempt
@require_POST
def demo_client_secret(request: HttpRequest) -> HttpResponse:
    """``POST /demo/client_secret``: a short-lived client secret for the demo page, only while
    the operator keeps the open demo on (``DEMO_OPEN``); rate-limited per client address."""
    if not settings.DEMO_OPEN:
        raise Http404("the open demo is off")
    per_minute = settings.DEMO_SECRETS_PER_MINUTE
    try:
        admission = take_token(key="demo:" + client_key(client_ip_of(request)),
                               per_minute=per_minute, burst=burst_for(per_minute), window=1.0)
        if admission.wait > 0:
            return problem(429, "too many demo calls from this address", code="rate_limited",
                           retry_after=math.ceil(admission.wait))
        minted = client_secret_mint_demo(seconds=settings.DEMO_SECRET_SECONDS)
    except Denied as exc:
        return denied(exc)
    except (redis.RedisError, DatabaseError):
        return problem(503, "a backing service does not answer", code="unavailable",
                       retry_after=2)
    return JsonResponse(minted_json(minted))


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
def node_drain_or_resume(request: HttpRequest, kind: str, node_id: int) -> HttpResponse:
    """Drain (``drain=1``) or resume a node through the health services, the one drain path."""
    draining = request.POST.get("drain") == "1"
    who = request.user.get_username()
    reason = f"{'drained' if draining else 'resumed'} by {who} from the dashboard"
    action = node_drain if draining else node_resume
    try:
        changed = action(kind=NodeKind(kind), node_id=node_id, reason=reason)
    except ObjectDoesNotExist:
        raise Http404("no such node") from None
    except ValidationError as exc:
        messages.error(request, f"Could not change {kind} {node_id}: {exc}")
        return redirect("dashboard")
    verb = "is draining" if draining else "resumed"
    messages.success(request, f"{kind.capitalize()} {node_id} {verb}." if changed else "No change.")
    return redirect("dashboard")
