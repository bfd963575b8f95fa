"""The dashboard in a real headless Chromium, against the whole stack.

redis-server, keyguard, the demo upstream and Envoy (``running_http_stack``), plus
``keyguard admin serve`` on the same Redis; Debian's ``chromium`` driven by selenium
through ``/usr/bin/chromedriver`` (given explicitly: Selenium Manager never runs, nothing
is downloaded). In the page: sign in, create a key and read it once, use it through
Envoy, disable it, and the next request is a 401. Also: a wrong token cannot sign in, a
viewer has no write buttons and its writes are refused, a session's write without its
CSRF token is refused, and signing out ends the session.

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
from collections.abc import Iterator
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

    def cookie(self, name: str) -> str | None:
        found = self.driver.get_cookie(name)
        return None if found is None else str(found["value"])

    def session_http(self) -> httpx.Client:
        """An HTTP client holding the browser's session cookie (as a script can't)."""
        session = self.cookie("kg_session")
        assert session is not None, "not signed in"
        return httpx.Client(
            base_url=self.url, cookies={"kg_session": session}, trust_env=False, timeout=10
        )


def visible(driver: WebDriver, css: str) -> list[WebElement]:
    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


def make_driver(profile: str) -> WebDriver:
    options = Options()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=CHROMEDRIVER)  # so Selenium Manager never runs
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


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
    question = dash.shown("#confirm-dialog")
    assert "Disable" in question.text and key.id in question.text
    dash.find("#confirm-yes").click()
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
    with httpx.Client(base_url=dash.url, trust_env=False, timeout=10) as http:
        route = http.get(
            f"/v1/keys/{key.id}/usage", headers={"Authorization": f"Bearer {dash.admin.token}"}
        )
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
    for action in ("disable", "enable", "edit", "topup", "delete"):
        assert not dash.driver.find_elements(By.CSS_SELECTOR, f'button[data-action="{action}"]')
    assert dash.driver.find_elements(By.CSS_SELECTOR, 'button[data-action="usage"]')
    with dash.session_http() as http:
        csrf = http.get("/session").json()["csrf"]
        refused = http.post("/v1/keys", json={"quota": 1}, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "viewer" in refused.json()["detail"]


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
