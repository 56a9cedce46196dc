"""/dashboard/budgets/: staff and team admins set monthly limits within their reach."""

from decimal import Decimal

import pytest
from django.utils import timezone

from sessions_app.models import Budget
from tests.conftest import login


def set_budget(client, scope, target, amount):
    return client.post("/dashboard/budgets/", {"scope": scope, "target": target, "monthly_limit_usd": amount})


def test_staff_sets_and_removes_a_team_budget(csrf_client, staff, team_a, team_b):
    login(csrf_client, staff)
    assert set_budget(csrf_client, "team", str(team_b.pk), "25.50").status_code == 302
    assert Budget.objects.get(team=team_b).monthly_limit_usd == Decimal("25.50")
    assert set_budget(csrf_client, "team", str(team_b.pk), "30").status_code == 302
    assert Budget.objects.get(team=team_b).monthly_limit_usd == Decimal("30")
    assert set_budget(csrf_client, "team", str(team_b.pk), "").status_code == 302
    assert not Budget.objects.exists()


def test_team_admin_sets_a_members_budget(csrf_client, alice, bob):
    login(csrf_client, alice)
    page = csrf_client.get("/dashboard/budgets/").content.decode()
    assert 'data-target="bob"' in page
    assert "are also in a team you do not administer" in " ".join(page.split())  # whose limits are not here, why
    assert set_budget(csrf_client, "user", "bob", "5").status_code == 302
    assert Budget.objects.get(user=bob).monthly_limit_usd == Decimal("5")


def test_team_admin_cannot_reach_another_team(csrf_client, alice, charlie, team_b):
    login(csrf_client, alice)
    page = csrf_client.get("/dashboard/budgets/").content.decode()
    assert "charlie" not in page and str(team_b.pk) not in page
    for scope, target in (("user", "charlie"), ("team", str(team_b.pk))):
        response = set_budget(csrf_client, scope, target, "1")
        assert response.status_code == 400 and "among those you manage" in response.content.decode()
    assert not Budget.objects.exists()


def test_a_person_also_in_another_team_is_not_a_team_admins_to_cap(csrf_client, alice, staff, charlie, team_a):
    """charlie is in Other and also in alice's team: his own limit counts his spend in Other too, which alice
    neither sees nor administers; she saw that spend on her page and could set it to $0."""
    from sessions_app.models import SpendDay
    from teams_app.models import Membership, Team

    Membership.objects.create(user=charlie, team=team_a, role=Membership.MEMBER)
    other = Team.objects.get(name="Other")
    SpendDay.objects.create(day=timezone.now().date(), user=charlie, team=other, team_key=other.pk.hex,
                            model="gpt-realtime", cost_usd=Decimal("7.77"))
    login(csrf_client, alice)
    page = csrf_client.get("/dashboard/budgets/").content.decode()
    assert 'data-target="charlie"' not in page and "7.77" not in page
    response = set_budget(csrf_client, "user", "charlie", "0")
    assert response.status_code == 400 and "among those you manage" in response.content.decode()
    assert not Budget.objects.exists()
    login(csrf_client, staff)
    assert set_budget(csrf_client, "user", "charlie", "0").status_code == 302


def test_staff_can_cap_a_person_in_no_team_and_a_team_admin_cannot(csrf_client, staff, alice, team_a):
    """A person in no team can still start conversations: only staff may give them a limit."""
    from tests.conftest import _user

    frank = _user("frank")
    login(csrf_client, staff)
    assert 'data-target="frank"' in csrf_client.get("/dashboard/budgets/").content.decode()
    assert set_budget(csrf_client, "user", "frank", "3").status_code == 302
    assert Budget.objects.get(user=frank).monthly_limit_usd == Decimal("3")
    login(csrf_client, alice)
    assert 'data-target="frank"' not in csrf_client.get("/dashboard/budgets/").content.decode()
    response = set_budget(csrf_client, "user", "frank", "")
    assert response.status_code == 400 and "among those you manage" in response.content.decode()
    assert Budget.objects.get(user=frank).monthly_limit_usd == Decimal("3")


def test_a_team_admin_cannot_lift_their_own_limit(csrf_client, alice, bob):
    Budget.objects.create(user=alice, monthly_limit_usd=Decimal("1"))
    login(csrf_client, alice)
    assert 'data-target="alice"' not in csrf_client.get("/dashboard/budgets/").content.decode()
    for amount in ("100000", ""):
        assert set_budget(csrf_client, "user", "alice", amount).status_code == 400
    assert Budget.objects.get(user=alice).monthly_limit_usd == Decimal("1")


@pytest.mark.parametrize("amount", ["-1", "lots", "10000000", "1.123456"])
def test_bad_amounts_are_400(csrf_client, alice, amount):
    login(csrf_client, alice)
    assert set_budget(csrf_client, "user", "bob", amount).status_code == 400
    assert not Budget.objects.exists()


def test_members_are_refused_and_anonymous_redirected(csrf_client, client, bob, erin):
    assert client.get("/dashboard/budgets/").status_code == 302
    for user in (bob, erin):
        login(csrf_client, user)
        assert csrf_client.get("/dashboard/budgets/").status_code == 403
        assert set_budget(csrf_client, "user", user.username, "100").status_code == 403
    assert not Budget.objects.exists()


def test_wrong_method_is_405(csrf_client, staff):
    login(csrf_client, staff)
    assert csrf_client.put("/dashboard/budgets/").status_code == 405


def test_spend_is_shown_for_everyone_limit_or_not(csrf_client, alice, bob, team_a):
    from tests.test_budgets import spend

    spend(bob, "1.25")
    login(csrf_client, alice)
    page = csrf_client.get("/dashboard/budgets/").content.decode()
    assert page.count('data-spent="1.25000000"') == 2  # bob's row and his team's, neither with a limit; 8 places
    assert 'name="target" value="bob"' in page and 'type="hidden" name="target"' in page


def test_a_save_is_confirmed_and_an_overspend_has_a_real_minus(csrf_client, alice, bob):
    from tests.test_budgets import spend

    spend(bob, "1.25")
    login(csrf_client, alice)
    response = csrf_client.post("/dashboard/budgets/", {"scope": "user", "target": "bob",
                                                        "monthly_limit_usd": "$0.05"}, follow=True)
    page = response.content.decode()
    assert "Saved: bob may spend $0.05 a month." in page
    assert "\u2212$1.20" in page and "$-" not in page
    assert Budget.objects.get(user=bob).monthly_limit_usd == Decimal("0.05")


def test_an_error_is_said_beside_its_row_in_words(csrf_client, alice, bob):
    login(csrf_client, alice)
    response = set_budget(csrf_client, "user", "bob", "-3")
    page = response.content.decode()
    assert response.status_code == 400
    assert "A limit cannot be negative." in page and 'aria-invalid="true"' in page and 'value="-3"' in page
    assert "errorlist" not in page


@pytest.mark.parametrize("typed, stored", [("$1,200", "1200"), ("1,200.50", "1200.50"), (" $ 25 ", "25"), ("12.5", "12.5")])
def test_amounts_are_read_as_people_type_them(csrf_client, alice, bob, typed, stored):
    login(csrf_client, alice)
    assert set_budget(csrf_client, "user", "bob", typed).status_code == 302
    assert Budget.objects.get(user=bob).monthly_limit_usd == Decimal(stored)


@pytest.mark.parametrize("typed", ["$", ",,,", "1,2,3", "12,34", "$,"])
def test_an_amount_that_is_only_signs_is_refused_and_the_limit_kept(csrf_client, alice, bob, typed):
    """Once, "$" or ",,," read as an empty field, which removes the limit, and "1,2,3" as $123."""
    login(csrf_client, alice)
    assert set_budget(csrf_client, "user", "bob", "10").status_code == 302
    response = set_budget(csrf_client, "user", "bob", typed)
    assert response.status_code == 400
    assert "Write the limit in dollars" in response.content.decode()
    assert Budget.objects.get(user=bob).monthly_limit_usd == Decimal("10")
