from .models import Team

# The main navigation: (path, label, who sees it).
NAV = [
    ("/", "Talk", "member"),
    ("/documents/", "Library", "member"),
    ("/sessions/", "My sessions", "member"),
    ("/dashboard/", "Spend", "spend"),
    ("/dashboard/budgets/", "Budgets", "spend"),
    ("/admin/", "Admin", "staff"),
]


def _nav(path, sees_spend, is_staff, section=None):
    """The links the user may follow; the one whose page this is (or the section it is under, which a view
    may name) is current."""
    shown = [(href, label) for href, label, who in NAV
             if who == "member" or (who == "spend" and sees_spend) or (who == "staff" and is_staff)]
    if section is None:
        section = max((href for href, _ in shown if href != "/" and path.startswith(href)), key=len, default=None)
    return [{"href": href, "label": label,
             "current": "page" if href == path else ("true" if href == section else "")}
            for href, label in shown]


def roles(request):
    """Whether to show the spend dashboard link (staff and team admins see spend), and the navigation."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"sees_spend": False, "nav": []}
    sees_spend = user.is_staff or Team.objects.spend_visible_to(user).exists()
    return {"sees_spend": sees_spend,
            "nav": _nav(request.path, sees_spend, user.is_staff, getattr(request, "nav_section", None))}
