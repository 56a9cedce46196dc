from .models import Team


def roles(request):
    """Whether to show the spend dashboard link: staff and team admins see spend."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"sees_spend": False}
    return {"sees_spend": user.is_staff or Team.objects.spend_visible_to(user).exists()}
