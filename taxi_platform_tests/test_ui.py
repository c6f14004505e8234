"""The Dagster UI in a real browser: the real dagster-webserver and dagster-daemon on a temporary home, driven
by Debian's Chromium through Playwright. The screenshots it takes are the README's (docs/*.png).

What a user sees is checked where they see it: every layer's assets and their edges in the global lineage,
the months done on clean/green_trips' partitions page, a 2-month backfill launched from the UI that completes
and lands its rows in PostgreSQL, the sensors on the automation page, the mart's chart; and no page error
in the browser console from start to end.
"""

import os
import re
import time
from urllib.parse import quote

import dagster as dg
import psycopg
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from taxi_platform.definitions import defs
from taxi_platform_tests.helpers import failed_runs, materialize_with
from taxi_platform_tests.ui import PROJECT, DagsterUI, chromium, write_instance

DOCS = PROJECT / "docs"
GREEN_CLEAN_ROWS = {"2020-11": 45868, "2020-12": 44228}
BACKFILL = ("raw/green_trips", "clean/green_trips", "clean/green_trips_rejected", "postgres/green_trips")
MART = dg.AssetKey(["marts", "monthly_summary"])
WAREHOUSE_GREEN = dg.AssetKey(["warehouse", "green_trips"])
WAREHOUSE_ZONES = dg.AssetKey(["warehouse", "taxi_zones"])


def phase(timings: dict, name: str, started: float) -> None:
    timings[name] = round(time.monotonic() - started - sum(timings.values()))


def wait_for(what: str, condition, timeout: float, ui: DagsterUI | None = None, interval: float = 1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = f"\ndaemon log:\n{ui.log('daemon')}" if ui else ""
            pytest.fail(f"after {timeout:.0f} s still waiting for {what}{logs}")
        time.sleep(interval)


def settled(instance, quiet: float = 12) -> bool:
    """No run in flight, none created in the last `quiet` seconds (two automation ticks), no backfill
    going on."""
    runs = instance.get_runs(limit=1)
    in_flight = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING,
            ]
        )
    )
    backfills = instance.get_backfills(filters=None, limit=None)
    return (
        not in_flight
        and not any(b.status == BulkActionStatus.REQUESTED for b in backfills)
        and (
            not runs
            or time.time() - instance.get_run_record_by_id(runs[0].run_id).create_timestamp.timestamp()
            > quiet
        )
    )


def postgres_rows(schema: str, month: str) -> int:
    with psycopg.connect(os.environ["TAXI_POSTGRES_URL"]) as conn:
        return conn.execute(
            f"SELECT count(*) FROM \"{schema}\".green_trips WHERE to_char(pickup_date, 'YYYY-MM') = %s",
            [month],
        ).fetchone()[0]


def lineage_in_the_browser(page) -> dict[str, list]:
    """{"nodes": asset keys, "edges": [upstream, downstream] pairs} as the lineage graph draws them: each
    asset node read as <the group box it is in>/<its name>, each edge as the nodes its path starts and
    ends at."""
    return page.locator("svg[class*=AssetGraphExplorer_svgContainer]").evaluate("""svg => {
      const box = f => ({x: +f.getAttribute('x'), y: +f.getAttribute('y'),
                         w: +f.getAttribute('width'), h: +f.getAttribute('height')});
      const groups = Array.from(svg.querySelectorAll('foreignObject.group')).map(f => ({
        ...box(f), name: f.querySelector('[data-tooltip]').getAttribute('data-tooltip')}));
      const nodes = Array.from(svg.querySelectorAll('foreignObject')).filter(
        f => f.querySelector('[class*=AssetNode_assetName] [data-tooltip]')).map(f => {
          const b = box(f);
          const group = groups.find(g => b.x >= g.x && b.x + b.w <= g.x + g.w
                                         && b.y >= g.y && b.y + b.h <= g.y + g.h);
          const name = f.querySelector('[class*=AssetNode_assetName] [data-tooltip]')
            .getAttribute('data-tooltip');
          return {...b, key: (group ? group.name + '/' : '?/') + name};
        });
      const at = (x, y, side) => nodes.find(n => y >= n.y && y <= n.y + n.h &&
        Math.abs(x - (side === 'out' ? n.x + n.w : n.x)) <= 12);
      const edges = [];
      for (const path of svg.querySelectorAll(':scope > path[marker-end]')) {
        const length = path.getTotalLength();
        const start = path.getPointAtLength(0), end = path.getPointAtLength(length);
        const from = at(start.x, start.y, 'out'), to = at(end.x, end.y, 'in');
        edges.push([from ? from.key : `?(${start.x},${start.y})`, to ? to.key : `?(${end.x},${end.y})`]);
      }
      return {nodes: nodes.map(n => n.key), edges};
    }""")


def test_the_ui_in_a_real_browser(taxi_env, pg_schema, tmp_path, monkeypatch):
    started, timings = time.monotonic(), {}
    monkeypatch.setenv("TAXI_SENSOR_INTERVAL_SECONDS", "5")  # the automation sensor ticks every 5 s
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    edges = {
        (p.to_user_string(), k.to_user_string())
        for k in graph.get_all_asset_keys()
        for p in graph.get(k).parent_keys
    }
    for layer in ("raw", "clean", "postgres", "warehouse"):
        assert f"{layer}/green_trips" in keys
    assert "reference/taxi_zones" in keys
    sensors = sorted(definitions.sensors or [], key=lambda s: s.name)
    has_mart = MART in graph.get_all_asset_keys()
    green_months = graph.get(dg.AssetKey(["clean", "green_trips"])).partitions_def.get_partition_keys()

    home = tmp_path / "dagster_home"
    home.mkdir()
    write_instance(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Done before the UI starts, in this process, on the same instance: green 2020-10 and the zones.
        result = materialize_with(
            instance,
            "reference/taxi_zones",
            "raw/green_trips",
            "clean/green_trips",
            "clean/green_trips_rejected",
            partition="2020-10",
        )
        assert result.success
        phase(timings, "materialize 2020-10", started)

        errors, ignored, blocked = [], [], []
        with (
            DagsterUI(home, dict(os.environ)) as ui,
            chromium(ui.url, failure_screenshot=tmp_path / "failure.png") as browser,
        ):
            page = browser.page
            phase(timings, "start webserver+daemon", started)

            # -- Lineage: every layer's assets and every edge, as drawn. --------------------------------
            browser.goto("/asset-groups")
            first_run_dialog = browser.dismiss_first_run(wait=10)
            page.get_by_role("button", name="settings", exact=True).click()
            page.get_by_role("menuitem", name="Expand all groups").click()
            page.keyboard.press("Escape")
            page.set_viewport_size({"width": 2400, "height": 6000})  # the graph draws what is in view
            page.reload()
            page.locator("[class*=AssetNode_assetName]").first.wait_for()
            drawn = wait_for(
                "every asset node drawn",
                lambda: (d := lineage_in_the_browser(page)) and set(d["nodes"]) == keys and d,
                timeout=30,
            )
            assert sorted(drawn["nodes"]) == sorted(keys)  # each once
            assert {tuple(e) for e in drawn["edges"]} == edges, (drawn["edges"], edges)
            assert ("raw/green_trips", "clean/green_trips") in edges
            assert ("clean/green_trips", "postgres/green_trips") in edges
            assert ("clean/green_trips", "warehouse/green_trips") in edges
            assert ("reference/taxi_zones", "postgres/taxi_zones") in edges

            page.set_viewport_size({"width": 1440, "height": 900})
            phase(timings, "lineage", started)

            # -- Partitions of clean/green_trips: 2020-10 done, the rest missing. ------------------------
            browser.goto("/assets/clean/green_trips?view=partitions")
            total = len(green_months)
            page.get_by_text("Materialized (1)").wait_for()
            page.get_by_text(f"Missing ({total - 1})").wait_for()
            page.get_by_placeholder("Filter by name").fill("2020-")
            wait_for(
                "2020's months listed, 2020-10 green and the others gray",
                lambda: (
                    partition_dots(page)
                    == {f"2020-{m:02d}": "green" if m == 10 else "gray" for m in range(1, 13)}
                ),
                timeout=15,
            )
            month_row(page, "2020-10").click()
            details = page.locator("text=Latest materialization").locator("xpath=../..")
            wait_for("2020-10's materialization shown", lambda: "None" not in details.inner_text(), 15)
            browser.screenshot(DOCS / "partitions.png")
            month_row(page, "2020-09").click()
            wait_for("2020-09 shown never materialized", lambda: "None" in details.inner_text(), 15)
            phase(timings, "partitions", started)

            # -- A 2-month backfill launched from the UI. ---------------------------------------------
            browser.goto("/asset-groups")
            select(page, " or ".join(f'key:"{k}"' for k in BACKFILL))
            page.get_by_role("button", name=re.compile("Materialize")).first.click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text(f"Launch runs to materialize {len(BACKFILL)} assets").wait_for()
            dialog.get_by_role("button", name="Custom").click()
            partitions = dialog.get_by_placeholder(re.compile("^ex: "))
            partitions.fill("[2020-11...2020-12]")
            partitions.press("Enter")
            dialog.get_by_text("2 partitions").wait_for()
            dialog.get_by_role("button", name="Launch backfill").click()
            (backfill,) = wait_for("the backfill created", instance.get_backfills, timeout=30)
            targets = backfill.asset_backfill_data.target_subset.iterate_asset_partitions()
            assert {(t.asset_key.to_user_string(), t.partition_key) for t in targets} == {
                (key, month) for key in BACKFILL for month in GREEN_CLEAN_ROWS
            }

            wait_for(
                "the backfill to complete",
                lambda: (
                    instance.get_backfill(backfill.backfill_id).status
                    not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING)
                ),
                timeout=150,
                ui=ui,
                interval=2,
            )
            status = instance.get_backfill(backfill.backfill_id).status
            assert status == BulkActionStatus.COMPLETED_SUCCESS, (
                f"backfill {status}:\n{failed_runs(instance)}"
            )
            for month, rows in GREEN_CLEAN_ROWS.items():
                assert postgres_rows(pg_schema, month) == rows, month
            phase(timings, "backfill", started)
            browser.goto(f"/runs/b/{backfill.backfill_id}")
            page.get_by_text("2020-11...2020-12").wait_for()
            page.get_by_text("Succeeded", exact=True).first.wait_for()
            for key in BACKFILL:  # each asset's row: 2 months targeted, 2 succeeded
                link = page.locator(f'a[href="/assets/{key}"]').filter(visible=True)
                row = link.locator("xpath=ancestor::*[count(div) >= 5][1]")  # name, progress; 4 counts
                row.get_by_text("100% completed").wait_for()
                assert re.search(r"\b2\s+0\s+2\s+0\b", row.inner_text()), row.inner_text()
            browser.screenshot(DOCS / "backfill.png")
            phase(timings, "backfill page", started)

            # -- The sensors, each on or off as the definitions default it. ---------------------------
            assert sensors, "the definitions have no sensors"
            browser.goto("/automation")
            for sensor in sensors:
                row = page.locator("[data-index]").filter(
                    has=page.locator(f'a[href$="/sensors/{sensor.name}"]')
                )
                row.get_by_text(sensor.name, exact=True).wait_for()
                toggle = row.locator("input[type=checkbox]").nth(1)  # the first selects the row
                toggle.wait_for(state="attached")
                running = sensor.default_status == dg.DefaultSensorStatus.RUNNING
                assert toggle.is_checked() == running, f"{sensor.name} shown {'off' if running else 'on'}"
            page.wait_for_timeout(500)
            browser.screenshot(DOCS / "sensors.png", full_page=True)
            phase(timings, "sensors", started)

            # -- Every run the UI and the daemon started has ended (the automation's loads too). -----
            wait_for("the runs to end", lambda: settled(instance), timeout=120, ui=ui, interval=2)
            assert not failed_runs(instance), failed_runs(instance)
            phase(timings, "settle", started)
            lineage = 'key:"*green_trips*" or key:"*taxi_zones*" or group:marts'  # green's, readable
            browser.goto("/asset-groups~" + quote(lineage, safe=""))
            page.locator("[class*=AssetNode_assetName]").first.wait_for()
            page.wait_for_timeout(2000)
            browser.screenshot(DOCS / "lineage.png")
            phase(timings, "lineage screenshot", started)

            # -- The mart's chart, once the marts are in the definitions. -----------------------------
            if has_mart:
                ui.stop("daemon")  # nothing runs behind this process's back from here
                # What the automation has not done yet, in this process, upstream first.
                redo = False
                for key in (WAREHOUSE_GREEN, WAREHOUSE_ZONES, *graph.get(MART).parent_keys, MART):
                    month = "2020-11" if graph.get(key).partitions_def else None
                    done = (
                        month in instance.get_materialized_partitions(key)
                        if month
                        else instance.get_latest_materialization_event(key) is not None
                    )
                    if redo or not done:
                        assert materialize_with(instance, key.to_user_string(), partition=month).success
                        redo = True
                browser.goto(f"/assets/{MART.to_user_string()}?view=partitions")
                page.get_by_placeholder("Filter by name").fill("2020-11")
                month_row(page, "2020-11").click()
                page.get_by_text("Show Markdown").click()  # the chart metadata, rendered in a dialog
                chart = page.get_by_role("dialog").locator("img[src^='data:image/png;base64,']")
                chart.wait_for()
                wait_for(
                    "the chart drawn",
                    lambda: chart.evaluate("i => i.complete && i.naturalWidth > 0"),
                    timeout=15,
                )
                browser.screenshot(DOCS / "mart-chart.png")
            phase(timings, "mart", started)
            errors, ignored, blocked = browser.errors, browser.ignored, browser.blocked
        phase(timings, "stop", started)
        assert ui.exit_codes == {"webserver": 0, "daemon": 0}, ui.exit_codes  # shut down cleanly

    print(f"\nfirst-run community dialog shown and skipped: {first_run_dialog}")
    print(f"UI test: {time.monotonic() - started:.0f} s {timings}")
    print(
        f"console errors ignored (requests to other hosts, blocked): {ignored}; "
        f"requests blocked: {sorted(set(blocked))}"
    )
    assert not errors, "\n".join(errors)


def month_row(page, month: str):
    return page.locator(f"[data-tooltip='{month}']").filter(visible=True)


def partition_dots(page) -> dict[str, str]:
    """The partition list's months and the colour of their status dots (green: materialized)."""
    return page.locator("[data-tooltip]:has([class*=MiddleTruncate_container])").evaluate_all("""rows =>
      Object.fromEntries(rows.filter(r => r.offsetParent).map(r => [r.getAttribute('data-tooltip'),
        ((r.nextElementSibling && r.nextElementSibling.style.background) || '').replace(
          /^var\\(--color-accent-(\\w+)\\).*$/, '$1')]))""")


def select(page, query: str) -> None:
    """Type an asset selection into the lineage's search and filter box."""
    page.locator(".CodeMirror").first.click()
    page.keyboard.type(query)
    page.keyboard.press("Enter")
