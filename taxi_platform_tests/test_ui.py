"""The Dagster UI in a real browser: the real dagster-webserver and dagster-daemon on a temporary home, driven
by Debian's Chromium through Playwright, on the synthetic source (conftest's `published`).

What a user sees is checked where they see it: every layer's assets and their edges in the global lineage,
the months done on clean/green_trips' partitions page, a 2-month backfill launched from the UI that completes
and lands its rows in PostgreSQL, the sensors on the automation page, the mart's chart; and no page error
in the browser console from start to end.

The screenshots it takes go to the test's temporary folder. They are the README's pictures (docs/*.png):
to refresh those, name the folder to write them to, relative to the repository root:

    TAXI_UI_SCREENSHOTS=docs python -m pytest -m browser
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
from taxi_platform_tests.helpers import course_counts, failed_runs, materialize_with
from taxi_platform_tests.ui import PROJECT, DagsterServices, chromium, quiet, wait_for, write_instance

pytestmark = [pytest.mark.browser, pytest.mark.daemon, pytest.mark.postgres, pytest.mark.slow]

BACKFILL_MONTHS = ("2020-11", "2020-12")
# The sensors on by default that could start a run.
SENSORS = ["taxi_automation", "landing_sensor"]
BACKFILL = ("raw/green_trips", "clean/green_trips", "clean/green_trips_rejected", "postgres/green_trips")
MART = dg.AssetKey(["marts", "monthly_summary"])
MODEL_GROUPS = ("staging", "core", "marts")  # the dbt models' layers
WAREHOUSE_GREEN = dg.AssetKey(["warehouse", "green_trips"])
WAREHOUSE_ZONES = dg.AssetKey(["warehouse", "taxi_zones"])


def phase(timings: dict, name: str, started: float) -> None:
    timings[name] = round(time.monotonic() - started - sum(timings.values()))


def screenshots(tmp_path):
    """Where the screenshots go: TAXI_UI_SCREENSHOTS (a folder, relative to the repository root: `docs`
    refreshes the README's), else the test's temporary folder."""
    folder = os.environ.get("TAXI_UI_SCREENSHOTS")
    return PROJECT / folder if folder else tmp_path / "screenshots"


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


def test_the_ui_in_a_real_browser(published, taxi_env, pg_schema, tmp_path, monkeypatch):
    started, timings = time.monotonic(), {}
    pictures = screenshots(tmp_path)
    clean_rows = {  # the backfilled months' clean rows, counted from the served files
        month: course_counts(published / f"releases/green/green_tripdata_{month}.csv.gz", month)["clean"]
        for month in BACKFILL_MONTHS
    }
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
    green_lineage = {  # the assets the lineage screenshot selects (below)
        key
        for key in keys
        if "green_trips" in key
        or "taxi_zones" in key
        or graph.get(dg.AssetKey.from_user_string(key)).group_name in MODEL_GROUPS
    }
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
            DagsterServices(home, dict(os.environ)) as ui,
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
            page.set_viewport_size({"width": 3600, "height": 6000})  # the graph draws what is in view
            page.reload()
            page.locator("[class*=AssetNode_assetName]").first.wait_for()
            # The edges are drawn after the nodes (once in CI none was drawn yet when every node was):
            # wait for both, then compare them exactly.
            seen = []

            def whole_graph_drawn():
                seen[:] = [lineage_in_the_browser(page)]
                return set(seen[0]["nodes"]) == keys and len(seen[0]["edges"]) >= len(edges) and seen[0]

            drawn = wait_for(
                "every asset node and edge drawn", whole_graph_drawn, timeout=30, details=lambda: seen
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
            browser.screenshot(pictures / "partitions.png")
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
                (key, month) for key in BACKFILL for month in BACKFILL_MONTHS
            }

            wait_for(
                "the backfill to complete",
                lambda: (
                    instance.get_backfill(backfill.backfill_id).status
                    not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING)
                ),
                timeout=150,
                details=lambda: ui.log("daemon"),
                interval=2,
            )
            status = instance.get_backfill(backfill.backfill_id).status
            assert status == BulkActionStatus.COMPLETED_SUCCESS, (
                f"backfill {status}:\n{failed_runs(instance)}"
            )
            assert {month: postgres_rows(pg_schema, month) for month in BACKFILL_MONTHS} == clean_rows
            phase(timings, "backfill", started)
            browser.goto(f"/runs/b/{backfill.backfill_id}")
            page.get_by_text("2020-11...2020-12").wait_for()
            page.get_by_text("Succeeded", exact=True).first.wait_for()
            for key in BACKFILL:  # each asset's row: 2 months targeted, 2 succeeded
                link = page.locator(f'a[href="/assets/{key}"]').filter(visible=True)
                row = link.locator("xpath=ancestor::*[count(div) >= 5][1]")  # name, progress; 4 counts
                row.get_by_text("100% completed").wait_for()
                assert re.search(r"\b2\s+0\s+2\s+0\b", row.inner_text()), row.inner_text()
            browser.screenshot(pictures / "backfill.png")
            phase(timings, "backfill page", started)

            # -- The sensors, each on or off as the definitions default it. ---------------------------
            assert sensors, "the definitions have no sensors"
            browser.goto("/automation")
            for sensor in sensors:
                row = page.locator("[data-index]").filter(
                    has=page.locator(f'a[href$="/sensors/{sensor.name}"]')
                )
                row.get_by_text(sensor.name, exact=True).wait_for()
                wait_for(f"{sensor.name}'s status loaded", lambda row=row: status_loaded(row), timeout=60)
                toggle = row.locator("input[type=checkbox]").nth(1)  # the first selects the row
                running = sensor.default_status == dg.DefaultSensorStatus.RUNNING
                assert toggle.is_checked() == running, f"{sensor.name} shown {'off' if running else 'on'}"
            browser.screenshot(pictures / "sensors.png", full_page=True)
            phase(timings, "sensors", started)

            # -- Every run the UI and the daemon started has ended (the automation's loads too), and the
            # sensors have since ticked twice asking for nothing. ----------------------------------------
            wait_for(
                "the runs to end and the sensors to settle",
                lambda: quiet(instance, SENSORS),
                timeout=180,
                details=lambda: ui.log("daemon"),
                interval=1,
            )
            assert not failed_runs(instance), failed_runs(instance)
            phase(timings, "settle", started)
            # Green's lineage, readable: raw -> clean -> warehouse -> staging -> core -> marts.
            lineage = 'key:"*green_trips*" or key:"*taxi_zones*" or ' + " or ".join(
                f"group:{group}" for group in MODEL_GROUPS
            )
            browser.goto("/asset-groups~" + quote(lineage, safe=""))
            green_edges = {(p, k) for p, k in edges if {p, k} <= green_lineage}
            wait_for(  # zoomed out to fit, the nodes show their names only (truncated): count them
                f"green's lineage drawn: {len(green_lineage)} nodes, {len(green_edges)} edges",
                lambda: drawn_counts(page) == (len(green_lineage), len(green_edges)),
                timeout=30,
            )
            browser.screenshot(pictures / "lineage.png")
            phase(timings, "lineage screenshot", started)

            # -- The mart's chart, once the marts are in the definitions. -----------------------------
            if has_mart:
                ui.stop("daemon")  # nothing runs behind this process's back from here
                # What the automation has not done yet, in this process, upstream first.
                redo = False
                models = ("core/dim_zones", "staging/stg_green_trips", "marts/daily_zone_trips")
                for key in (
                    WAREHOUSE_GREEN,
                    WAREHOUSE_ZONES,
                    *map(dg.AssetKey.from_user_string, models),
                    MART,
                ):
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
                browser.screenshot(pictures / "mart-chart.png")
            phase(timings, "mart", started)
            errors, ignored, blocked = browser.errors, browser.ignored, browser.blocked
        phase(timings, "stop", started)
        assert ui.exit_codes == {"webserver": 0, "daemon": 0}, ui.exit_codes  # shut down cleanly
        assert not ui.outlived, f"processes outlived {ui.outlived}"

    print(f"\nfirst-run community dialog shown and skipped: {first_run_dialog}")
    print(f"UI test: {time.monotonic() - started:.0f} s {timings}")
    print(
        f"console errors ignored (requests to other hosts, blocked): {ignored}; "
        f"requests blocked: {sorted(set(blocked))}"
    )
    assert not errors, "\n".join(errors)


def drawn_counts(page) -> tuple[int, int]:
    """(asset nodes, edges) the lineage graph draws."""
    return page.locator("[class*=AssetNode_assetName]").count(), len(lineage_in_the_browser(page)["edges"])


def status_loaded(row) -> bool:
    """Whether an automation row shows its sensor's status: while it loads, the row has skeletons, and
    its on/off toggle is missing or disabled and unchecked. (A spinner may stay: it also shows a tick in
    progress, which under load, with ticks every second, is most of the time.)"""
    return row.evaluate("""row => {
      const boxes = row.querySelectorAll('input[type=checkbox]');
      return !row.querySelector('[class*=Skeleton_]') && boxes.length === 2 && !boxes[1].disabled;
    }""")


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
