"""Moving the project folder keeps the warehouse queryable: the warehouse's views name lake files
relative to the lake, and every reader resolves them against the warehouse's own folder."""

import shutil

from engagement_dagster.core.storage.warehouse import connect, duckdb_query
from tests.conftest import KB_CUSTOMERS, KB_WEEKS


def test_moving_the_project_folder_keeps_the_warehouse_queryable(kb_weeks, tmp_path, monkeypatch):
    root = kb_weeks[0]
    with connect(root / "warehouse.duckdb") as con:
        views = dict(con.execute("select view_name, sql from duckdb_views() where not internal").fetchall())
    assert "stg_customers" in views
    assert not [name for name, sql in views.items() if str(root) in sql], "a view holds the lake's absolute path"

    # The project folder, lake included, copied and then moved: the folder it was built in is gone.
    shutil.copytree(root, tmp_path / "before" / ".lake")
    (tmp_path / "before").rename(tmp_path / "after")
    moved = tmp_path / "after" / ".lake" / "warehouse.duckdb"
    monkeypatch.chdir(tmp_path)  # neither the old lake nor the process's folder resolves the paths

    rows = duckdb_query(moved, "select snapshot_week, count(*) as n from stg_customers group by 1 order by 1")
    # The staging view reads the lake's files for the week dbt last built: the second one.
    assert [str(week)[:10] for week in rows["snapshot_week"]] == [KB_WEEKS[-1]]
    assert rows["n"].tolist() == [KB_CUSTOMERS]
    marts = duckdb_query(moved, "select count(distinct snapshot_week) as weeks from weekly_summary")
    assert marts["weeks"].item() == len(KB_WEEKS)
