"""The dashboard in a real headless Chromium, against the whole stack.

redis-server, keyguard, the demo upstream and Envoy (``running_http_stack``), plus
``keyguard admin serve`` on the same Redis; Debian's ``chromium`` driven by selenium
through ``/usr/bin/chromedriver`` (given explicitly: Selenium Manager never runs, nothing
is downloaded). In the page: sign in, create a key and read it once, use it through
Envoy, disable it, and the next request is a 401. Rotate a key: its new secret is shown
once and works through Envoy, the old one works during its grace and is a 401 after it.
Set, edit and remove a price, and create, edit and delete a plan, each read back through
the API; a bad value shows the API's message and changes nothing. Also: a wrong token
cannot sign in, a viewer has no write buttons (keys, prices, plans) and its writes are
refused, a session's write without its CSRF token is refused, and signing out ends the
session.

``KEYGUARD_SCREENSHOTS=docs/screenshots`` saves the README's screenshots there (PNG);
otherwise they go to a temporary directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from harness.net import free_port, wait_for_port
from harness.process import stop_process
from keyguard.keys import hash_key
from tests.e2e.conftest import HttpStack, Key, running_http_stack
from tests.support.procs import keyguard_cmd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 10.0  # seconds any one thing in the page may take

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (tools/bootstrap.sh installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 (after the skip: selenium is a dev extra)
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PAGE_CHANGING = (NoSuchElementException, StaleElementReferenceException)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--window-size=1600,900",
    "--force-device-scale-factor=1",
]


@dataclass(frozen=True, repr=False)
class Token:
    id: str
    token: str = ""

    def __repr__(self) -> str:
        return f"Token(id={self.id!r})"  # never the token itself


@dataclass(repr=False)
class Dashboard:
    stack: HttpStack
    url: str
    admin: Token
    viewer: Token
    driver: WebDriver
    shots: Path
    admin_log: Path
    secrets: list[str]  # every raw key and token of the run: checked absent from logs
    with_env: bool = False  # the API knows a key's env and owner

    def __repr__(self) -> str:
        return f"Dashboard(url={self.url!r})"  # failure output never shows a secret

    def token_cli(self, role: str) -> Token:
        result = self.stack.cli("admin", "tokens", "create", "--role", role, "--json")
        if result.returncode != 0:
            pytest.fail(f"admin tokens create failed: {result.stderr[-2000:]}")
        data = json.loads(result.stdout)
        self.secrets.append(data["token"])
        return Token(data["id"], data["token"])

    # --- the page --------------------------------------------------------------------

    def wait(self, what: Any, timeout: float = WAIT) -> Any:
        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.05, ignored_exceptions=PAGE_CHANGING
        ).until(what)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def shown(self, css: str) -> WebElement:
        return self.wait(lambda d: next(iter(visible(d, css)), False))

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / name))

    def open_login(self) -> None:
        self.driver.delete_all_cookies()
        self.driver.get(f"{self.url}/login")
        self.shown("#login-token")

    def sign_in(self, token: Token) -> None:
        self.open_login()
        self.find("#login-token").send_keys(token.token)
        self.find("#login-submit").click()
        self.wait_ready()

    def wait_ready(self) -> None:
        self.wait(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))

    def row(self, key_id: str) -> WebElement:
        return self.shown(f'#keys tr[data-id="{key_id}"]')

    def row_in(self, view: str, name: str) -> WebElement:
        """A row of the prices (by model) or plans (by name) table."""
        attr = "data-model" if view == "prices" else "data-name"
        return self.shown(f'#{view} tr[{attr}="{name}"]')

    def cookie(self, name: str) -> str | None:
        found = self.driver.get_cookie(name)
        return None if found is None else str(found["value"])

    def open_view(self, view: str) -> None:
        """Switch to a view by its tab and wait until its table is loaded."""
        self.find(f"#tab-{view}").click()
        self.wait(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-view") == view)
        self.shown(f"#view-{view}")

    def confirm(self, *words: str) -> None:
        """Answer the confirmation dialog with yes, after checking that it names words."""
        question = self.shown("#confirm-dialog")
        for word in words:
            assert word in question.text
        self.find("#confirm-yes").click()
        self.wait(lambda d: not d.find_element(By.ID, "confirm-dialog").is_displayed())

    def api(self) -> httpx.Client:
        """The admin API with the admin token (to read back what the page changed)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.admin.token}"},
            trust_env=False,
            timeout=10,
        )

    def session_http(self) -> httpx.Client:
        """An HTTP client holding the browser's session cookie (as a script can't)."""
        session = self.cookie("kg_session")
        assert session is not None, "not signed in"
        return httpx.Client(
            base_url=self.url, cookies={"kg_session": session}, trust_env=False, timeout=10
        )


def visible(driver: WebDriver, css: str) -> list[WebElement]:
    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


def fill(form: WebElement, **fields: str) -> None:
    """Type each value into the form's field of that name (empty: leave it empty)."""
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        if value:
            field.send_keys(value)


def make_driver(profile: str) -> WebDriver:
    options = Options()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports, below
    service = Service(executable_path=CHROMEDRIVER)  # so Selenium Manager never runs
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def csp_reports(driver: WebDriver) -> list[str]:
    """What the page's CSP blocked (an inline script, handler or style attribute), as
    Chromium logs it to the console: since the last call, across page loads."""
    assert isinstance(driver, webdriver.Chrome)
    get_log: Callable[[str], list[dict[str, Any]]] = driver.get_log  # untyped in selenium
    return [
        str(entry["message"])[:300]
        for entry in get_log("browser")
        if "Content Security Policy" in str(entry["message"])
    ]


@contextlib.contextmanager
def admin_server(redis_url: str, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "KEYGUARD_REDIS_URL": redis_url}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*keyguard_cmd(), "admin", "serve", "--listen", f"127.0.0.1:{port}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=20)
        yield proc
    finally:
        stop_process(proc)


def supports_env(url: str) -> bool:
    """Whether this admin API has a key's environment and owner (``env``, ``owner``)."""
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as http:
        doc = http.get("/openapi.json").json()
    return "env" in doc["components"]["schemas"]["KeyCreate"]["properties"]


def sample_keys(stack: HttpStack, with_env: bool) -> None:
    """A few keys of each kind, so the table has something to show."""

    def key(*options: str, env: str = "live", owner: str = "") -> Key:
        labels = ("--env", env, "--owner", owner) if with_env else ()
        return stack.key(*options, *labels)

    key(
        "--name",
        "search-bot",
        "--quota",
        "250000",
        "--models",
        "gpt-4o-mini,gpt-4o",
        owner="search",
    )
    key(
        "--name",
        "eval-runner",
        "--unlimited",
        "--rpm",
        "600",
        "--expires",
        "+90d",
        env="test",
        owner="ml-evals",
    )
    key(
        "--name",
        "team-sub",
        "--type",
        "subscription",
        "--quota",
        "100000",
        "--cycle",
        "30d",
        owner="team-b",
    )
    old = key("--name", "old-prototype", "--quota", "0", env="test", owner="team-a")
    stack.admin("disable", old.id)


@pytest.fixture(scope="module")
def dash() -> Iterator[Dashboard]:
    shots_env = os.environ.get("KEYGUARD_SCREENSHOTS")
    with (
        tempfile.TemporaryDirectory(prefix="kg-dash-") as tmp,
        running_http_stack() as stack,
    ):
        shots = Path(shots_env) if shots_env else Path(tmp) / "shots"
        shots.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = Path(tmp) / "admin.log"
        with admin_server(stack.redis.url, port, log):
            url = f"http://127.0.0.1:{port}"
            driver = make_driver(str(Path(tmp) / "profile"))
            d = Dashboard(stack, url, Token(""), Token(""), driver, shots, log, [])
            try:
                d.admin = d.token_cli("admin")
                d.viewer = d.token_cli("viewer")
                d.with_env = supports_env(url)
                sample_keys(stack, d.with_env)
                yield d
                blocked = csp_reports(driver)
                assert not blocked, blocked
            finally:
                driver.quit()
        text = log.read_text(errors="replace")
        assert "Traceback" not in text
        leaked = [i for i, secret in enumerate(d.secrets) if secret in text]
        if leaked:  # by index: never print the secret
            pytest.fail(f"the admin server's log holds secrets #{leaked}")


# --- tests ----------------------------------------------------------------------------


def test_a_wrong_token_cannot_sign_in(dash: Dashboard) -> None:
    dash.open_login()
    dash.shot("dashboard-sign-in.png")
    wrong = "kga-" + "x" * 43
    dash.find("#login-token").send_keys(wrong)
    dash.find("#login-submit").click()
    error = dash.shown("#login-error")
    assert "not a valid admin token" in error.text
    assert dash.driver.current_url.endswith("/login")
    assert dash.cookie("kg_session") is None
    assert wrong not in dash.driver.page_source
    # The page and its API stay closed.
    dash.driver.get(f"{dash.url}/")
    dash.shown("#login-token")
    assert dash.driver.current_url.endswith("/login")


def test_sign_in_create_read_once_use_through_envoy_then_disable(dash: Dashboard) -> None:
    started = time.monotonic()
    dash.sign_in(dash.admin)
    assert dash.admin.id in dash.find("#whoami").text
    assert visible(dash.driver, "#create-key")
    dash.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#keys tbody tr")) >= 4)

    # Create a key with options, in the page.
    dash.find("#create-key").click()
    form = dash.shown("#create-form")
    form.find_element(By.NAME, "name").send_keys("team-a")
    form.find_element(By.NAME, "quota").send_keys("5000")
    form.find_element(By.NAME, "models").send_keys("gpt-4o-mini, gpt-4o")
    form.find_element(By.NAME, "rpm").send_keys("120")
    form.find_element(By.NAME, "expires").send_keys("+30d")
    if dash.with_env:
        form.find_element(By.NAME, "env").send_keys("live")
        form.find_element(By.NAME, "owner").send_keys("team-a")
    dash.find("#create-submit").click()

    # Shown once, with the warning and a copy button.
    key_input = dash.shown("#created-key")
    raw = dash.wait(lambda d: key_input.get_attribute("value") or False)
    dash.secrets.append(raw)
    assert raw.startswith("sk-")
    assert "will not be shown again" in dash.find("#created-warning").text
    dash.find("#copy-key").click()
    dash.wait(lambda d: d.find_element(By.ID, "copy-key").text == "Copied")
    info = dash.find("#created-info").text
    key_id = next(part.strip() for part in info.split("·") if part.strip().startswith("kg_"))
    key = Key(id=key_id, key=raw, type="standard")
    # The README's screenshot shows the dialog with the key's body blanked out.
    dash.driver.execute_script(
        "arguments[0].value = arguments[0].value.slice(0, 7) + '•'.repeat(36);", key_input
    )
    dash.shot("dashboard-created-key.png")
    dash.find("#created-done").click()
    dash.wait(lambda d: not d.find_element(By.ID, "created-dialog").is_displayed())
    assert raw not in dash.driver.page_source
    row = dash.row(key.id)
    assert "team-a" in row.text and "active" in row.text
    assert "5,000" in row.text
    if dash.with_env:
        assert "live" in row.text and "team-a" in row.text

    # A reload never shows it again.
    dash.driver.refresh()
    dash.wait_ready()
    dash.row(key.id)
    assert raw not in dash.driver.page_source
    assert not visible(dash.driver, "#created-dialog")

    # The key works through Envoy...
    resp = dash.stack.chat(key)
    assert resp.status_code == 200, resp.text[:300]

    # ...until it is disabled in the page, after a confirmation.
    dash.find("#refresh").click()
    dash.wait(lambda d: "4,999" in d.find_element(By.CSS_SELECTOR, f'tr[data-id="{key.id}"]').text)
    dash.shot("dashboard-keys.png")
    dash.row(key.id).find_element(By.CSS_SELECTOR, 'button[data-action="disable"]').click()
    dash.confirm("Disable", key.id)
    dash.wait(
        lambda d: "disabled" in d.find_element(By.CSS_SELECTOR, f'tr[data-id="{key.id}"]').text
    )
    disabled_at = time.monotonic()
    resp = dash.stack.eventually(lambda: dash.stack.chat(key), 401, timeout=2.0)
    assert resp.status_code == 401, resp.text[:300]
    assert resp.headers.get("x-keyguard-reason") == "key_disabled"
    assert time.monotonic() - disabled_at < 2.5
    assert time.monotonic() - started < 45

    # The audit trail names the admin token as the actor of the page's changes.
    audit = redis.Redis.from_url(dash.stack.redis.url, decode_responses=True)
    try:
        entries = [e[1] for e in audit.xrange("kg:audit")]
    finally:
        audit.close()
    mine = [(e["action"], e["actor"]) for e in entries if e.get("target") == key.id]
    assert mine == [
        ("key.create", f"token:{dash.admin.id}"),
        ("key.disable", f"token:{dash.admin.id}"),
    ]


def seed_usage(url: str, key: Key, days: int = 30) -> None:
    """Usage history as settlement writes it (kg:{H}:use:<date>), for the chart."""
    client = redis.Redis.from_url(url, decode_responses=True)
    today = dt.datetime.now(dt.UTC).date()
    try:
        for back in range(days):
            date = (today - dt.timedelta(days=back)).isoformat()
            fields: dict[str, int] = {}
            for n, model in enumerate(("gpt-4o-mini", "gpt-4o", "claude-3-5-haiku")):
                requests = (back * 7 + n * 13) % 40 + (0 if (back + n) % 6 else 25)
                if model == "gpt-4o" and back % 3:
                    continue
                fields[f"{model}|requests"] = requests
                fields[f"{model}|input"] = requests * 900
                fields[f"{model}|output"] = requests * 300
                fields[f"{model}|cached"] = requests * 100
                fields[f"{model}|credits"] = requests * (4 if model == "gpt-4o" else 1) * 11
            client.hset(f"kg:{{{hash_key(key.key)}}}:use:{date}", mapping=fields)  # type: ignore[arg-type]
    finally:
        client.close()


def test_usage_over_the_last_30_days_as_a_chart(dash: Dashboard) -> None:
    labels = ("--env", "live", "--owner", "web") if dash.with_env else ()
    key = dash.stack.key("--name", "chat-frontend", "--quota", "90000", *labels)
    dash.secrets.append(key.key)
    seed_usage(dash.stack.redis.url, key)
    dash.sign_in(dash.admin)
    dash.row(key.id).find_element(By.CSS_SELECTOR, 'button[data-action="usage"]').click()
    dash.shown("#usage")
    with dash.api() as api:
        route = api.get(f"/v1/keys/{key.id}/usage")
    if route.status_code == 404 and "no such route" in route.text:
        # The usage route is not there yet: the page says so instead of failing.
        dash.shown("#usage-empty")
        pytest.skip("GET /v1/keys/{id}/usage is not served yet; the page shows 'No usage yet'")
    assert route.status_code == 200, route.text
    bars = dash.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#usage-chart svg rect"))
    assert len(bars) >= 30
    legend = dash.find("#usage-legend").text
    assert "gpt-4o-mini" in legend and "claude-3-5-haiku" in legend
    assert not visible(dash.driver, "#usage-empty")
    dash.driver.execute_script("document.getElementById('usage').scrollIntoView()")
    dash.shot("dashboard-usage.png")


def test_a_session_write_without_its_csrf_token_is_refused(dash: Dashboard) -> None:
    dash.sign_in(dash.admin)
    with dash.session_http() as http:
        me = http.get("/session").json()
        assert me["role"] == "admin" and me["token_id"] == dash.admin.id
        before = http.get("/v1/keys").json()["items"]
        body = {"name": "csrf-probe", "quota": 1}
        refused = [
            http.post("/v1/keys", json=body),
            http.post("/v1/keys", json=body, headers={"X-CSRF-Token": "wrong"}),
            http.post(
                "/v1/keys",
                json=body,
                headers={"X-CSRF-Token": me["csrf"], "Origin": "http://evil.example"},
            ),
        ]
        assert [r.status_code for r in refused] == [403, 403, 403]
        assert all(r.headers["content-type"] == "application/problem+json" for r in refused)
        assert http.get("/v1/keys").json()["items"] == before
        made = http.post("/v1/keys", json=body, headers={"X-CSRF-Token": me["csrf"]})
        assert made.status_code == 201, made.text
        dash.secrets.append(made.json()["key"])
        assert made.headers["cache-control"] == "no-store"
    # A sign-in posted from elsewhere (no form token, or a foreign Origin) sets no cookie.
    with httpx.Client(base_url=dash.url, trust_env=False, timeout=10) as http:
        form = http.get("/login")
        nonce = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        bare = http.post("/login", data={"token": dash.admin.token})
        foreign = http.post(
            "/login",
            data={"token": dash.admin.token, "csrf": nonce},
            headers={"Origin": "http://evil.example"},
        )
        for resp in (bare, foreign):
            assert resp.status_code == 403 and "kg_session" not in resp.headers.get(
                "set-cookie", ""
            )


def test_a_viewer_sees_no_write_buttons_and_its_writes_are_refused(dash: Dashboard) -> None:
    dash.sign_in(dash.viewer)
    assert "viewer" in dash.find("#whoami").text
    dash.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#keys tbody tr"))
    assert not visible(dash.driver, "#create-key")
    for action in ("disable", "enable", "edit", "topup", "rotate", "delete"):
        assert not dash.driver.find_elements(By.CSS_SELECTOR, f'button[data-action="{action}"]')
    assert dash.driver.find_elements(By.CSS_SELECTOR, 'button[data-action="usage"]')

    # Prices and plans: the viewer sees the tables, with no way to change them.
    with dash.api() as api:
        price = api.put("/v1/prices/viewer-model", json={"input": 5, "output": 6})
        assert price.status_code == 200, price.text
        plan = api.post("/v1/plans", json={"name": "viewer-plan", "quota": 10, "cycle": "1d"})
        assert plan.status_code == 201, plan.text
    dash.open_view("prices")
    dash.shown('#prices tr[data-model="viewer-model"]')
    assert not visible(dash.driver, "#set-price")
    dash.open_view("plans")
    dash.shown('#plans tr[data-name="viewer-plan"]')
    assert not visible(dash.driver, "#create-plan")
    for action in ("price-edit", "price-remove", "plan-edit", "plan-delete"):
        assert not dash.driver.find_elements(By.CSS_SELECTOR, f'button[data-action="{action}"]')

    with dash.session_http() as http:
        csrf = http.get("/session").json()["csrf"]
        refused = [
            http.post("/v1/keys", json={"quota": 1}, headers={"X-CSRF-Token": csrf}),
            http.put(
                "/v1/prices/viewer-model",
                json={"input": 1, "output": 1},
                headers={"X-CSRF-Token": csrf},
            ),
            http.delete("/v1/plans/viewer-plan", headers={"X-CSRF-Token": csrf}),
        ]
        for resp in refused:
            assert resp.status_code == 403 and "viewer" in resp.json()["detail"]
    with dash.api() as api:
        assert api.get("/v1/prices/viewer-model").json()["input"] == 5
        assert api.get("/v1/plans/viewer-plan").status_code == 200


def rotate_in_page(
    dash: Dashboard, key_id: str, grace: str, shot: str | None = None
) -> tuple[str, str]:
    """Rotate a key in the page with this grace: the new secret (read from the show-once
    dialog, which is then closed) and what the dialog said of the previous secret."""
    dash.row(key_id).find_element(By.CSS_SELECTOR, 'button[data-action="rotate"]').click()
    form = dash.shown("#rotate-form")
    assert form.find_element(By.NAME, "grace").get_attribute("value") == "0"  # the API's default
    fill(form, grace=grace)
    dash.find("#rotate-submit").click()
    dash.confirm("Rotate", key_id, grace)
    key_input = dash.shown("#created-key")
    raw: str = dash.wait(lambda d: key_input.get_attribute("value") or False)
    dash.secrets.append(raw)
    assert "will not be shown again" in dash.find("#created-warning").text
    assert key_id in dash.find("#created-info").text
    previous = dash.shown("#created-grace").text
    dash.find("#copy-key").click()
    dash.wait(lambda d: d.find_element(By.ID, "copy-key").text == "Copied")
    if shot:  # with the key's body blanked out, as for a created key
        dash.driver.execute_script(
            "arguments[0].value = arguments[0].value.slice(0, 7) + '•'.repeat(36);", key_input
        )
        dash.shot(shot)
    dash.find("#created-done").click()
    dash.wait(lambda d: not d.find_element(By.ID, "created-dialog").is_displayed())
    assert raw not in dash.driver.page_source  # forgotten on close
    return raw, previous


def delete_plan_in_page(dash: Dashboard, name: str, keys: str, warning: str) -> None:
    """Refresh the plans until the plan shows this many keys, press its Delete and say yes
    to a confirmation that gives this warning."""
    dash.find("#plans-refresh").click()
    cell = f'tr[data-name="{name}"] td:nth-child(9)'
    dash.wait(lambda d: d.find_element(By.CSS_SELECTOR, cell).text == keys)
    dash.row_in("plans", name).find_element(
        By.CSS_SELECTOR, 'button[data-action="plan-delete"]'
    ).click()
    dash.confirm("Delete", name, warning)


def test_edit_sends_only_the_fields_changed_in_the_page(dash: Dashboard) -> None:
    key = dash.stack.key("--name", "editing-bot", "--quota", "9000", "--rpm", "60")
    dash.secrets.append(key.key)
    dash.sign_in(dash.admin)
    with dash.api() as api:
        before = api.get(f"/v1/keys/{key.id}").json()
    dash.row(key.id).find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').click()
    form = dash.shown("#edit-form")
    # The dialog opens with the key's values.
    assert form.find_element(By.NAME, "name").get_attribute("value") == "editing-bot"
    assert form.find_element(By.NAME, "rpm").get_attribute("value") == "60"
    assert form.find_element(By.NAME, "models").get_attribute("value") == "*"
    fill(form, name="edited-bot", rpm="120")
    form.find_element(By.NAME, "payg").click()
    dash.find("#edit-submit").click()
    dash.wait(lambda d: not d.find_element(By.ID, "edit-dialog").is_displayed())
    with dash.api() as api:
        after = api.get(f"/v1/keys/{key.id}").json()
        edits = [
            e
            for e in api.get("/v1/audit", params={"key": key.id}).json()["items"]
            if e["action"] == "key.edit"
        ]
    assert (after["name"], after["rpm"], after["payg"]) == ("edited-bot", 120, True)
    unchanged = ("remaining", "models", "allowed_ips", "expires_at", "tpm", "env", "owner")
    assert {k: after.get(k) for k in unchanged} == {k: before.get(k) for k in unchanged}
    # One edit, naming exactly the fields changed in the page.
    assert [set(e["fields"]) for e in edits] == [{"name", "rpm", "payg"}], edits


def test_rotate_shows_the_new_secret_once_and_the_old_one_lasts_its_grace(
    dash: Dashboard,
) -> None:
    old = dash.stack.key("--name", "rotating-bot", "--quota", "9000")
    dash.secrets.append(old.key)
    assert dash.stack.chat(old).status_code == 200
    dash.sign_in(dash.admin)

    # A bad grace is the API's one-line refusal, in the rotate dialog; nothing changes.
    dash.row(old.id).find_element(By.CSS_SELECTOR, 'button[data-action="rotate"]').click()
    fill(dash.shown("#rotate-form"), grace="31d")
    dash.find("#rotate-submit").click()
    dash.confirm("Rotate")
    error = dash.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#rotate-form .error").text)
    assert error == "grace: grace '31d' is longer than 30d"
    assert dash.find("#rotate-form").is_displayed()
    dash.find("#rotate-form [data-close]").click()
    with dash.api() as api:
        assert "rotated_at" not in api.get(f"/v1/keys/{old.id}").json()

    # Rotate with a grace of an hour: the new secret is shown once, with the grace's end.
    new_raw, previous = rotate_in_page(dash, old.id, "1h", shot="dashboard-rotated-key.png")
    assert new_raw.startswith("sk-") and new_raw != old.key
    with dash.api() as api:
        grace_until = api.get(f"/v1/keys/{old.id}").json()["grace_until"]
    ends = dt.datetime.fromisoformat(grace_until.replace("Z", "+00:00"))
    assert 3500 < (ends - dt.datetime.now(dt.UTC)).total_seconds() <= 3600
    assert previous == f"The previous secret keeps working until {ends:%Y-%m-%d %H:%M:%S} UTC."
    new = Key(id=old.id, key=new_raw, type=old.type)
    resp = dash.stack.chat(new)
    assert resp.status_code == 200, resp.text[:300]
    resp = dash.stack.chat(old)  # in its grace
    assert resp.status_code == 200, resp.text[:300]

    # A reload never shows the new secret again, and the page kept it nowhere.
    dash.driver.refresh()
    dash.wait_ready()
    dash.row(old.id)
    assert new_raw not in dash.driver.page_source
    assert not visible(dash.driver, "#created-dialog")
    stored = dash.driver.execute_script(
        "return JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)]);"
    )
    assert new_raw not in stored and old.key not in stored

    # Rotate again with a short grace: the first secret, still in its grace, ends at once;
    # the second ends when its grace does.
    newest_raw, previous = rotate_in_page(dash, old.id, "2s")
    assert "keeps working until" in previous
    newest = Key(id=old.id, key=newest_raw, type=old.type)
    resp = dash.stack.chat(newest)
    assert resp.status_code == 200, resp.text[:300]
    resp = dash.stack.eventually(lambda: dash.stack.chat(old), 401)
    assert resp.status_code == 401, resp.text[:300]
    resp = dash.stack.eventually(lambda: dash.stack.chat(new), 401, timeout=10.0)
    assert resp.status_code == 401, resp.text[:300]
    resp = dash.stack.chat(newest)
    assert resp.status_code == 200, resp.text[:300]

    # The audit trail names the admin token as the actor of both rotations.
    with dash.api() as api:
        audit = api.get("/v1/audit", params={"key": old.id}).json()["items"]
    rotations = [(e["actor"], e["fields"]) for e in audit if e["action"] == "key.rotate"]
    assert rotations == [
        (f"token:{dash.admin.id}", {"grace": "1h"}),
        (f"token:{dash.admin.id}", {"grace": "2s"}),
    ]


PRICE = {
    "input": "2500000",
    "output": "10000000",
    "cached_input": "1250000",
    "cache_write": "3125000",
    "per_request": "7",
    "max_output": "4096",
}


def test_set_edit_refuse_and_remove_a_price_in_the_page(dash: Dashboard) -> None:
    model = "dash-model-2025*"
    path = f"/v1/prices/{model}"
    dash.sign_in(dash.admin)
    dash.open_view("prices")

    # A new price with a bad value is refused by the API, which says why; nothing is set.
    dash.find("#set-price").click()
    form = dash.shown("#price-form")
    fill(form, model=model, **{**PRICE, "input": "-5"})
    dash.find("#price-submit").click()
    error = dash.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#price-form .error").text)
    assert error == "input: -5 is negative; use 0 or more"
    with dash.api() as api:
        assert api.get(path).status_code == 404

    # Set it, with every field.
    fill(form, input=PRICE["input"])
    dash.find("#price-submit").click()
    dash.wait(lambda d: not d.find_element(By.ID, "price-dialog").is_displayed())
    row = dash.shown(f'#prices tr[data-model="{model}"]')
    assert "2,500,000" in row.text and "4,096" in row.text
    with dash.api() as api:
        got = api.get(path).json()
    assert got == {"model": model, **{name: int(value) for name, value in PRICE.items()}}
    dash.shot("dashboard-prices.png")

    # Edit it: the dialog holds the current price; the whole price is replaced.
    row.find_element(By.CSS_SELECTOR, 'button[data-action="price-edit"]').click()
    form = dash.shown("#price-form")
    assert form.find_element(By.NAME, "model").get_attribute("readonly") is not None
    current = {name: form.find_element(By.NAME, name).get_attribute("value") for name in PRICE}
    assert current == PRICE
    fill(form, input="3000000", per_request="0", max_output="")
    dash.find("#price-submit").click()
    dash.wait(
        lambda d: "3,000,000" in d.find_element(By.CSS_SELECTOR, f'tr[data-model="{model}"]').text
    )
    edited = {
        "model": model,
        **{name: int(value) for name, value in PRICE.items()},
        "input": 3000000,
        "per_request": 0,
        "max_output": None,
    }
    with dash.api() as api:
        assert api.get(path).json() == edited

    # A negative or fractional value in an edit: the API's message, nothing changed.
    for field, bad, message in (
        ("output", "-1", "output: -1 is negative; use 0 or more"),
        ("cache_write", "1.5", "cache_write: Input should be a valid integer"),
    ):
        dash.row_in("prices", model).find_element(
            By.CSS_SELECTOR, 'button[data-action="price-edit"]'
        ).click()
        form = dash.shown("#price-form")
        fill(form, **{field: bad})
        dash.find("#price-submit").click()
        error = dash.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#price-form .error").text)
        assert error.startswith(message), error
        assert "Traceback" not in error and "\n" not in error
        form.find_element(By.CSS_SELECTOR, "[data-close]").click()
        dash.wait(lambda d: not d.find_element(By.ID, "price-dialog").is_displayed())
        with dash.api() as api:
            assert api.get(path).json() == edited
    assert "3,000,000" in dash.row_in("prices", model).text

    # Remove it, after a confirmation.
    dash.row_in("prices", model).find_element(
        By.CSS_SELECTOR, 'button[data-action="price-remove"]'
    ).click()
    dash.confirm("Remove", model)
    dash.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-model="{model}"]'))
    assert f"Removed the price of {model}." in dash.shown("#message").text
    with dash.api() as api:
        assert api.get(path).status_code == 404


def test_create_edit_and_delete_a_plan_in_the_page(dash: Dashboard) -> None:
    name = "dash-pro"
    dash.sign_in(dash.admin)
    dash.open_view("plans")

    # Create it, with every field.
    dash.find("#create-plan").click()
    form = dash.shown("#plan-form")
    fill(
        form,
        name=name,
        quota="50000",
        cycle="30d",
        models="gpt-4o-mini, gpt-4o",
        rpm="60",
        tpm="",
        alert_below="10%",
    )
    form.find_element(By.NAME, "payg").click()
    dash.find("#plan-submit").click()
    dash.wait(lambda d: not d.find_element(By.ID, "plan-dialog").is_displayed())
    row = dash.shown(f'#plans tr[data-name="{name}"]')
    assert "50,000" in row.text and "gpt-4o-mini, gpt-4o" in row.text
    with dash.api() as api:
        got = api.get(f"/v1/plans/{name}").json()
    created_at = got.pop("created_at")
    assert created_at
    assert got == {
        "name": name,
        "quota": 50000,
        "cycle": "30d",
        "models": ["gpt-4o-mini", "gpt-4o"],
        "rpm": 60,
        "tpm": None,
        "payg": True,
        "alert_below": "10%",
        "keys": 0,
    }
    dash.shot("dashboard-plans.png")

    # Creating it again is the API's 409, shown in the dialog.
    dash.find("#create-plan").click()
    form = dash.shown("#plan-form")
    fill(form, name=name, quota="1", cycle="1d")
    dash.find("#plan-submit").click()
    error = dash.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#plan-form .error").text)
    assert error == f"plan {name!r} already exists; change it with plans set"
    form.find_element(By.CSS_SELECTOR, "[data-close]").click()

    # A bad value in an edit: the API's message, nothing changed.
    dash.row_in("plans", name).find_element(
        By.CSS_SELECTOR, 'button[data-action="plan-edit"]'
    ).click()
    form = dash.shown("#plan-form")
    assert form.find_element(By.NAME, "quota").get_attribute("value") == "50000"
    fill(form, quota="-5", rpm="120")
    dash.find("#plan-submit").click()
    error = dash.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#plan-form .error").text)
    assert error == "quota: '-5' is negative; use 0 or more"
    form.find_element(By.CSS_SELECTOR, "[data-close]").click()
    with dash.api() as api:
        assert {**api.get(f"/v1/plans/{name}").json(), "created_at": created_at} == {
            **got,
            "created_at": created_at,
        }

    # Edit it: only the fields changed are sent, and the API has them.
    dash.row_in("plans", name).find_element(
        By.CSS_SELECTOR, 'button[data-action="plan-edit"]'
    ).click()
    form = dash.shown("#plan-form")
    fill(form, quota="75000", cycle="12h", models="", rpm="0", tpm="5000", alert_below="")
    form.find_element(By.NAME, "payg").click()
    dash.find("#plan-submit").click()
    dash.wait(lambda d: not d.find_element(By.ID, "plan-dialog").is_displayed())
    dash.wait(lambda d: "75,000" in d.find_element(By.CSS_SELECTOR, f'tr[data-name="{name}"]').text)
    with dash.api() as api:
        edited = api.get(f"/v1/plans/{name}").json()
    assert edited == {
        "name": name,
        "quota": 75000,
        "cycle": "12h",
        "models": None,
        "rpm": None,
        "tpm": 5000,
        "payg": False,
        "alert_below": None,
        "keys": 0,
        "created_at": created_at,
    }

    # Deleting it while a key follows it is refused (409): the page says why.
    key = dash.stack.key("--name", "on-dash-pro", "--plan", name)
    dash.secrets.append(key.key)
    delete_plan_in_page(dash, name, "1", "1 key(s) still follow it")
    message = dash.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#message.bad").text)
    assert message.startswith(f"Delete plan {name}: plan {name!r} still has 1 key(s)")
    with dash.api() as api:
        assert api.get(f"/v1/plans/{name}").status_code == 200
        assert api.delete(f"/v1/keys/{key.id}").status_code == 200

    # Without keys it goes, after a confirmation.
    delete_plan_in_page(dash, name, "0", "cannot be undone")
    dash.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-name="{name}"]'))
    with dash.api() as api:
        assert api.get(f"/v1/plans/{name}").status_code == 404
        actions = [e["action"] for e in api.get("/v1/audit", params={"key": name}).json()["items"]]
    assert actions == ["plan.create", "plan.edit", "plan.delete"]


def test_signing_out_ends_the_session(dash: Dashboard) -> None:
    dash.sign_in(dash.admin)
    session = dash.cookie("kg_session")
    assert session is not None
    page = dash.driver.page_source
    with dash.session_http() as http:
        headers = http.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    assert "<script>" not in page
    dash.find("#logout").click()
    dash.shown("#login-token")
    assert dash.cookie("kg_session") is None
    # The old cookie value is dead on the server too.
    with httpx.Client(
        base_url=dash.url, cookies={"kg_session": session}, trust_env=False, timeout=10
    ) as http:
        assert http.get("/v1/keys").status_code == 401
        assert http.get("/session").status_code == 401


def test_no_asset_comes_from_elsewhere() -> None:
    """Every URL the pages name is the server's own (no CDN)."""
    import re

    from keyguard.admin import dashboard

    files = [*dashboard.PAGES.glob("*.html"), *dashboard.STATIC.glob("*")]
    assert {f.name for f in files} >= {"index.html", "login.html", "app.js", "style.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        foreign = [u for u in re.findall(r"https?://[^\s\"')]+", text) if "www.w3.org" not in u]
        assert not foreign, f"{path.name} names {foreign}"
    assert shutil.which("chromium") or Path(CHROMIUM).exists()
