"""Drives the trace UI in headless Chromium (Debian's `chromium`) with Playwright.

Run by tests/e2e/ui.rs, which starts a node with tenants, tokens and a 10,000-event job
and passes them in a JSON file: `python3 driver.py CONFIG.json`. Every check raises on
failure (exit status 1 with the reason); on success the last line of stdout is a JSON
object with what was measured and where the downloaded evidence package is.
"""
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

cfg = json.load(open(sys.argv[1]))
URL = cfg["url"]
TOK = cfg["tokens"]
SHOTS = cfg["screenshots"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
results = {"checks": []}


def check(ok, what):
    if not ok:
        raise AssertionError(what)
    results["checks"].append(what)


def api(method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def submit(token, plan, inp=None):
    s, j = api("POST", "/v1/jobs", token, {"plan": {"steps": plan}, "input": inp or {}})
    check(s == 201, f"submit answered 201 ({s} {j})")
    return j["job_id"]


def until(token, job, pred, what, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        _, j = api("GET", f"/v1/jobs/{job}", token)
        if pred(j):
            return j
        time.sleep(0.1)
    raise AssertionError(f"job {job}: {what} within {limit}s; last {j}")


AGENT = {"provider": "fake", "model": "m1", "system": "You refund orders.",
         "prompt": "Ticket: ${input.ticket}", "tools": ["lookup", "refund"],
         "approve": ["refund"], "max_turns": 4, "budget": {"tokens": 20000}}
REFUND = "approve-triage.1.1"


def agent_job():
    return submit(OPS, [{"id": "triage", "agent": AGENT}], {"ticket": "order B-9 broke"})


def awaits_approval(j):
    turns = ((j.get("steps") or [{}])[0].get("agent") or {}).get("turns", [])
    return any(c.get("awaits_approval") for t in turns for c in t["tool_calls"])


def labelled(page, where):
    """Every visible form control in `where` has a label (screen readers name it)."""
    bare = page.evaluate("""(sel) => [...document.querySelectorAll(sel + ' input, ' + sel + ' textarea, ' + sel + ' select')]
        .filter(e => e.type !== 'hidden' && e.labels.length === 0).map(e => e.name)""", where)
    check(not bare, f"every control in {where} has a label ({bare})")


HOSTILE = "<script>window.__pwned='input'</script><img src=x onerror=\"window.__pwned='img'\">"
OPS = TOK["operator"]


def new_page(browser, viewport=(1280, 900)):
    ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
    page = ctx.new_page()
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    return ctx, page


def login(page, token):
    page.goto(URL + "/ui/login")
    page.fill("textarea[name=token]", token)
    page.click("form.card button[type=submit]")
    page.wait_for_url("**/ui/jobs")


def inert(page, where):
    pwned = page.evaluate("() => window.__pwned === undefined ? null : String(window.__pwned)")
    check(pwned is None and not page.dialogs, f"{where}: injected script never ran ({pwned}, {page.dialogs})")


def shot(page, name, full=True):
    page.screenshot(path=f"{SHOTS}/{name}", full_page=full)


def status_badge(page):
    return page.inner_text("#job-summary dl.facts .badge")


def first_paint(page, job):
    samples = []
    for _ in range(5):
        page.goto(f"{URL}/ui/jobs/{job}")
        page.wait_for_function("() => performance.getEntriesByName('first-contentful-paint').length > 0")
        t = page.evaluate("""() => {
            const n = performance.getEntriesByType('navigation')[0];
            const p = performance.getEntriesByName('first-contentful-paint')[0];
            return {fcp: p.startTime, response_end: n.responseEnd,
                    server: (n.serverTiming || []).filter(s => s.name === 'app').map(s => s.duration)[0]};
        }""")
        samples.append(t)
    return {k: round(statistics.median(s[k] for s in samples), 1) for k in ("fcp", "response_end", "server")}


with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=cfg["chromium"], headless=True, args=FLAGS)
    ctx, page = new_page(browser)

    # Jobs submitted through the API, as users would.
    hostile = submit(OPS, [{"id": "echo", "tool": "echo", "args": {"html": HOSTILE}}],
                     {"note": HOSTILE, "order": "A-17"})
    waiting = submit(OPS, [{"id": "approve", "wait": {"signal": "approval"}},
                           {"id": "after", "tool": "echo", "needs": ["approve"],
                            "args": {"approved": "${steps.approve.output}"}}])
    unknown = submit(OPS, [{"id": "pay", "tool": "charge"},
                           {"id": "receipt", "tool": "echo", "needs": ["pay"], "args": {"paid": "${steps.pay.output}"}}])
    doomed = submit(OPS, [{"id": "hold", "wait": {"signal": "never"}}])
    parked = submit(OPS, [{"id": "hold", "wait": {"signal": "never"}}])
    agent_ok, agent_no, agent_pending = agent_job(), agent_job(), agent_job()
    # A step budget smaller than one model call's reservation: the step parks at once.
    agent_budget = submit(OPS, [{"id": "triage", "agent": dict(AGENT, tools=["lookup"], approve=[],
                                                               budget={"tokens": 500})}],
                          {"ticket": "order C-3 broke"})
    until(OPS, hostile, lambda j: j["status"] == "succeeded", "hostile job succeeds")

    # Sign in: a bad token is refused with the reason, a good one starts the session.
    page.goto(URL + "/ui/jobs")
    check(page.url.endswith("/ui/jobs") and page.locator("textarea[name=token]").count() == 1,
          "without a session the jobs page asks for a token")
    shot(page, "login.png", full=False)
    page.fill("textarea[name=token]", "not-a-token")
    page.click("form.card button[type=submit]")
    check("not a token" in page.inner_text("p.error") or "malformed" in page.inner_text("p.error").lower(),
          "a bad token is refused with a reason")
    login(page, OPS)
    cookie = [c for c in ctx.cookies() if c["name"] == "aetheris_ui"][0]
    check(cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui",
          "the session cookie is HttpOnly, SameSite=Strict, Path=/ui")
    check(page.evaluate("() => document.cookie") == "", "scripts cannot read the session cookie")

    # The list: rows, counts, filters, a hostile input inert.
    page.wait_for_selector(f"a[href='/ui/jobs/{waiting}']")
    check(page.locator("table.jobs tbody tr").count() >= 5, "the list shows the tenant's jobs")
    page.select_option("#f-status", "succeeded")
    page.click("form.filters button[type=submit]")
    check(page.locator(f"a[href='/ui/jobs/{hostile}']").count() == 1
          and page.locator(f"a[href='/ui/jobs/{waiting}']").count() == 0, "the status filter narrows the list")
    page.goto(URL + "/ui/jobs?q=a-17")
    check(page.locator("table.jobs tbody tr").count() == 1, "text in input finds the one job")
    page.goto(URL + "/ui/jobs?tool=charge")
    check(page.locator(f"a[href='/ui/jobs/{unknown}']").count() == 1
          and page.locator("table.jobs tbody tr").count() == 1, "the tool filter finds the charge job")
    page.goto(URL + "/ui/jobs")
    shot(page, "jobs.png")

    # The 10,000-event job opens fast: first paint measured in the browser.
    big = cfg["big_job"]
    results["first_paint_10k"] = first_paint(page, big)
    check(page.locator("#event-rows tr").count() == 50, "the big job shows one page of 50 events")
    check(page.locator("#event-rows .bad").count() == 0, "every shown event's chain holds")
    page.click("#events-more a")
    page.wait_for_function("() => document.querySelectorAll('#event-rows tr').length === 100")
    check(True, "more events are appended in place")
    page.select_option("#e-kind", "step_failed")
    page.fill("#e-step", "s042")
    page.click("#events form button[type=submit]")
    page.wait_for_function("() => [...document.querySelectorAll('#event-rows tr')].every(r => r.innerText.includes('step_failed') && r.innerText.includes('s042'))")
    check(page.locator("#event-rows tr").count() == 49, "the search finds the 49 failed attempts of s042")
    page.wait_for_selector("details.attempts")
    check("fencing token" in page.inner_text("details.attempts summary").lower(), "the attempts table lists fencing tokens")
    page.goto(f"{URL}/ui/jobs/{big}")
    page.wait_for_selector("details.attempts")
    shot(page, "job-10k-events.png", full=False)

    # Follow a running job to completion, live: no reload.
    live = submit(OPS, [{"id": "nap", "sleep": "3s"},
                        {"id": "done", "tool": "echo", "needs": ["nap"], "args": {"ok": True}}])
    page.goto(f"{URL}/ui/jobs/{live}")
    check(status_badge(page) in ("queued", "running", "waiting"), f"the live job is not finished yet ({status_badge(page)})")
    page.evaluate("() => { window.__same_document = true; }")
    page.wait_for_function("() => document.querySelector('#job-summary dl.facts .badge').innerText === 'succeeded'", timeout=20000)
    check(page.evaluate("() => window.__same_document === true"), "the page updated to succeeded without a reload")
    page.wait_for_function("() => [...document.querySelectorAll('#event-rows tr')].some(r => r.innerText.includes('job_succeeded'))", timeout=5000)
    check(True, "new events were appended live")

    # Send a signal to a waiting job (with a hostile payload), with confirmation.
    until(OPS, waiting, lambda j: j["status"] == "waiting", "the job waits")
    page.goto(f"{URL}/ui/jobs/{waiting}")
    page.fill("#s-payload", json.dumps({"ok": True, "html": "<script>window.__pwned='signal'</script>"}))
    page.click("text=Send signal…")
    check("Send this signal?" in page.inner_text("h1"), "sending asks for confirmation")
    page.click("text=Yes, send the signal")
    page.wait_for_url(f"**/ui/jobs/{waiting}?notice=signal")
    page.wait_for_function("() => document.querySelector('#job-summary dl.facts .badge').innerText === 'succeeded'", timeout=20000)
    inert(page, "signal payload and step output")
    check("<script>window.__pwned='signal'</script>" in page.inner_text("#job-summary"), "the hostile payload shows as text")
    shot(page, "job.png")

    # Confirm an outcome_unknown step.
    until(OPS, unknown, lambda j: j["steps"][0]["status"] == "outcome_unknown", "the charge is outcome_unknown")
    page.goto(f"{URL}/ui/jobs/{unknown}")
    shot(page, "job-outcome-unknown.png", full=False)
    page.check("input[name=outcome][value=succeeded]")
    page.fill("textarea[name=output]", '{"charge": "ch_ui"}')
    page.fill("input[name=note]", "bank shows the charge")
    page.click("text=Confirm…")
    page.click("text=Yes, record it")
    page.wait_for_function("() => document.querySelector('#job-summary dl.facts .badge').innerText === 'succeeded'", timeout=20000)
    check(True, "the confirmed job succeeded")

    # Cancel with a reason.
    page.goto(f"{URL}/ui/jobs/{doomed}")
    page.fill("#k-reason", "customer withdrew")
    page.click("text=Cancel job…")
    page.click("text=Yes, cancel the job")
    page.wait_for_function("() => document.querySelector('#job-summary dl.facts .badge').innerText === 'cancelled'", timeout=20000)
    check(True, "the cancelled job shows cancelled")

    # Agent steps: turns and tool calls; a proposed call approved with edited arguments,
    # another rejected; the model's hostile answer and arguments inert.
    for job in (agent_ok, agent_no, agent_pending):
        until(OPS, job, awaits_approval, "the refund awaits its approval")
    page.goto(f"{URL}/ui/jobs/{agent_ok}")
    page.wait_for_selector("#agents table.turns")
    page.wait_for_function("() => !document.querySelector('#agents').innerText.includes('Loading the latencies')")
    inert(page, "the model's answer and the proposed arguments")
    agents = page.inner_text("#agents")
    check("<script>window.__pwned='model'</script>" in agents, "the model's hostile answer shows as text")
    check("fake · m1" in agents and "1,200 / 45" in agents, f"the turn shows its provider, model and tokens in / out ({agents})")
    latency = page.inner_text("#agents table.turns tbody tr td:nth-of-type(3)")
    check(latency.strip() not in ("", "…", "—"), f"the turn shows its latency ({latency})")
    check("triage.1.0" in agents and "lookup" in agents, "the lookup call is listed")
    check(page.locator("[id='call-triage.1.1'] .badge").inner_text() == "awaiting approval",
          "the refund call shows awaiting approval")
    check("of 20,000 tokens" in agents, "the step's budget used is shown")
    form = page.locator(f"[id='{REFUND}']")
    check(form.count() == 1, "the operator is offered the approval")
    check("window.__pwned='args'" in form.inner_text(), "the proposed arguments are shown")
    labelled(page, "#actions")
    shot(page, "job-agent.png")
    form.locator("textarea[name=args]").fill(json.dumps({"amount": 25, "note": "edited in the UI"}))
    form.locator("button[value=edit]").click()
    check("Approve this tool call with your arguments?" in page.inner_text("h1"), "approving asks for confirmation")
    check('"amount": 25' in page.inner_text("main"), "the confirmation repeats the edited arguments")
    shot(page, "approval-confirm.png", full=False)
    page.click("text=Yes, approve with these arguments")
    page.wait_for_url(f"**/ui/jobs/{agent_ok}?notice=approval")
    page.wait_for_function("() => document.querySelector('#job-summary dl.facts .badge').innerText === 'succeeded'", timeout=20000)
    check(True, "the approved agent job went on to succeed")
    page.goto(f"{URL}/ui/jobs/{agent_ok}")
    agents = page.inner_text("#agents")
    check("approved by ops-alice" in agents, "the approval is recorded with the signed-in identity")
    check(page.locator("[id='call-triage.1.1'] .badge").inner_text() == "succeeded", "the approved refund ran")
    check("Handled: <b>not bold</b>." in agents and page.locator("#agents table.turns tbody tr").count() == 2,
          "the second turn and the final answer are shown")
    inert(page, "the finished agent job")

    page.goto(f"{URL}/ui/jobs/{agent_no}")
    form = page.locator(f"[id='{REFUND}']")
    form.locator("input[name=reason]").fill("no refunds today <script>window.__pwned='reason'</script>")
    # By keyboard: from the reason, Tab goes through Approve, Approve edited, Reject.
    for _ in range(3):
        page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.value + ':' + document.activeElement.tagName")
    check(focused == "reject:BUTTON", f"the decisions are reached with Tab ({focused})")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/ui/jobs/{agent_no}/approvals/triage.1.1")
    check("Reject this tool call?" in page.inner_text("h1"), "rejecting asks for confirmation")
    page.click("text=Yes, reject it")
    page.wait_for_url(f"**/ui/jobs/{agent_no}?notice=approval")
    page.wait_for_function("() => document.querySelector('#job-summary dl.facts .badge').innerText === 'succeeded'", timeout=20000)
    page.goto(f"{URL}/ui/jobs/{agent_no}")
    check(page.locator("[id='call-triage.1.1'] .badge").inner_text() == "refused", "the rejected refund shows refused")
    check("rejected by ops-alice: no refunds today" in page.inner_text("#agents"), "the rejection's reason is shown")
    inert(page, "the rejection reason")
    csrf = page.get_attribute("form.inline input[name=csrf]", "value")
    r = ctx.request.post(f"{URL}/ui/jobs/{agent_no}/approvals/triage.1.1",
                         form={"csrf": csrf, "decision": "approve", "confirmed": "yes"})
    check(r.status == 409, f"a decided call cannot be decided again ({r.status})")

    # A step parked at its budget: raise it from the UI, and the job goes on.
    until(OPS, agent_budget, lambda j: ((j["steps"][0].get("agent") or {}).get("budget_wait") or None) is not None,
          "the agent step parks at its budget")
    page.goto(f"{URL}/ui/jobs/{agent_budget}")
    check("Waiting for a budget decision" in page.inner_text("#agents")
          and page.locator("form#budget").count() == 1, "a parked step shows its wait and the budget card")
    labelled(page, "#actions")
    page.fill("#b-tokens", "20000")
    page.click("form#budget button[value=raise]")
    check("Decide the budget?" in page.inner_text("h1") and "raise the budget by 20,000 tokens" in page.inner_text("main"),
          "a raise asks for confirmation")
    page.click("text=Yes, send it")
    page.wait_for_url(f"**/ui/jobs/{agent_budget}?notice=budget")
    page.wait_for_function("() => document.querySelector('#job-summary dl.facts .badge').innerText === 'succeeded'", timeout=20000)
    page.goto(f"{URL}/ui/jobs/{agent_budget}")
    check("of 20,500 tokens" in page.inner_text("#agents"), "the raised budget is shown")

    # The supervision tree is the system tenant's admins' only: the API's own refusal.
    check(page.locator("header a[href='/ui/system']").count() == 0, "a tenant's operator is not offered the System page")
    r = page.goto(f"{URL}/ui/system")
    s, _ = api("GET", "/v1/system/actors", OPS)
    check(r.status == 403 and s == 403, f"a tenant's operator is refused /ui/system as the API refuses it ({r.status}, {s})")
    r = ctx.request.get(f"{URL}/ui/system/table")
    check(r.status == 403, "and its refreshing table")

    # A form from elsewhere (no CSRF token of this session) is refused.
    r = ctx.request.post(f"{URL}/ui/jobs/{waiting}/cancel", form={"csrf": "0" * 64, "reason": "x", "confirmed": "yes"})
    check(r.status == 403, f"a form without the session's CSRF token is refused ({r.status})")
    r = ctx.request.post(f"{URL}/ui/jobs/{waiting}/cancel", form={"csrf": "0" * 64, "reason": "x"},
                         headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    check(r.status == 403, "a cross-site form is refused")

    # Hostile input is inert on the job page; the CSP forbids inline scripts anyway.
    resp = page.goto(f"{URL}/ui/jobs/{hostile}")
    check("script-src 'self'" in resp.headers["content-security-policy"]
          and "frame-ancestors 'none'" in resp.headers["content-security-policy"]
          and resp.headers["x-content-type-options"] == "nosniff", "security headers are set")
    inert(page, "job input and step output")
    check("<script>window.__pwned='input'</script><img src=x onerror=" in page.inner_text("main"), "the hostile input shows as text")

    # Evidence: the checklist, then the download.
    page.goto(f"{URL}/ui/jobs/{hostile}")
    check(page.locator("text=Verify and download the evidence package").count() == 0,
          "an operator (no evidence:export) is not offered evidence")
    ctx.close()

    ctx, page = new_page(browser)
    login(page, TOK["auditor"])
    page.goto(f"{URL}/ui/jobs/{parked}")
    check("Your roles allow no actions" in page.inner_text("#actions")
          and page.locator("#actions form").count() == 0, "an auditor is offered no actions")
    page.goto(f"{URL}/ui/jobs/{hostile}")
    page.click("text=Verify and download the evidence package")
    check("VALID" in page.inner_text("p.verdict") and page.locator("ol.checklist li.pass").count() >= 5,
          "the evidence checklist passes")
    shot(page, "evidence.png")
    with page.expect_download() as d:
        page.click("a.button[download]")
    path = tempfile.mktemp(suffix=".zip")
    d.value.save_as(path)
    results["evidence_zip"] = path
    r = ctx.request.post(f"{URL}/ui/jobs/{parked}/cancel", form={"csrf": page.get_attribute("form.inline input[name=csrf]", "value"), "reason": "x", "confirmed": "yes"})
    check(r.status == 403, f"an auditor's cancel is refused even with a valid form ({r.status})")
    page.goto(f"{URL}/ui/jobs/{agent_pending}")
    page.wait_for_selector("#agents table.turns")
    check(page.locator(f"[id='{REFUND}']").count() == 0
          and page.locator("[id='call-triage.1.1'] .badge").inner_text() == "awaiting approval",
          "an auditor sees the pending approval but is offered no decision")
    r = ctx.request.post(f"{URL}/ui/jobs/{agent_pending}/approvals/triage.1.1",
                         form={"csrf": page.get_attribute("form.inline input[name=csrf]", "value"),
                               "decision": "approve", "confirmed": "yes"})
    check(r.status == 403, f"an auditor's approval is refused even with a valid form ({r.status})")
    ctx.close()

    # Another tenant: the same URLs answer 404, the list is empty of acme's jobs.
    ctx, page = new_page(browser)
    login(page, TOK["other_tenant"])
    check(page.locator(f"a[href='/ui/jobs/{hostile}']").count() == 0, "another tenant's list does not show acme's jobs")
    resp = page.goto(f"{URL}/ui/jobs/{hostile}")
    check(resp.status == 404 and "Not found" in page.inner_text("h1"), f"another tenant's job is a 404 ({resp.status})")
    missing = page.goto(f"{URL}/ui/jobs/01900000-0000-7000-8000-000000000000")
    check(missing.status == 404, "a job that does not exist is the same 404")
    r = ctx.request.get(f"{URL}/ui/jobs/{hostile}/events?rows=1")
    check(r.status == 404, "another tenant's events partial is a 404")
    r = page.goto(f"{URL}/ui/tenants")
    check(r.status == 403, "a tenant's admin may not list every tenant")
    ctx.close()

    # The system tenant's admin: tenants with limits and usage, a hostile name inert.
    ctx, page = new_page(browser)
    login(page, TOK["system_admin"])
    page.click("text=Tenants")
    inert(page, "tenant names")
    check("<script>window.__pwned='tenant'</script>" in page.inner_text("table.tenants"), "the hostile tenant name shows as text")
    row = page.inner_text("table.tenants tbody tr:has(th:text-is('acme'))")
    m = re.search(r"([\d,]+) of 1,000,000", row)
    check(m is not None and int(m.group(1).replace(",", "")) > 0,
          f"acme's LLM tokens of today are shown against its daily budget ({row})")
    shot(page, "tenants.png")
    # The supervision tree: every process with its actors, refreshing itself.
    page.click("header >> text=System")
    page.wait_for_function("() => document.querySelectorAll('article.process').length >= 2", timeout=20000)
    system = page.inner_text("main")
    check("gateway" in system and "worker" in system and page.locator("article.process .badge.st-succeeded").count() >= 2,
          f"the gateway and the worker are live ({system[:400]})")
    check(page.locator("article.process table.actors tbody tr").count() >= 1, "processes list their actors by kind")
    shot(page, "system.png")
    # Sign out ends the session.
    page.click("button.link")
    page.wait_for_url("**/ui/login")
    page.goto(URL + "/ui/jobs")
    check(page.locator("textarea[name=token]").count() == 1, "after signing out the jobs page asks for a token")
    ctx.close()

    # Readable on a phone.
    ctx, page = new_page(browser, (390, 844))
    login(page, OPS)
    page.goto(f"{URL}/ui/jobs/{waiting}")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    check(width <= 400, f"the job page fits a phone's width ({width}px)")
    shot(page, "job-phone.png", full=False)
    page.goto(f"{URL}/ui/jobs/{agent_pending}")
    page.wait_for_selector(f"[id='{REFUND}']")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    check(width <= 400, f"an agent job with its approval fits a phone's width ({width}px)")
    page.locator(f"[id='{REFUND}']").scroll_into_view_if_needed()
    shot(page, "job-agent-phone.png", full=False)
    ctx.close()
    browser.close()

results["jobs"] = {"hostile": hostile, "waiting": waiting, "unknown": unknown, "cancelled": doomed, "live": live,
                   "agent_approved": agent_ok, "agent_rejected": agent_no, "agent_pending": agent_pending,
                   "agent_budget": agent_budget}
print(json.dumps(results))
