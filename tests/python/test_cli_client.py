"""The command line as a client of a running service: login (token saved for its owner
only), vos put/ls/get/mv/cp/rm, query --out mydb:// and vos://, mydb import/list/drop,
group create/add/show/dissolve, logout."""

import io
import stat

import pandas as pd
import pytest

from conftest import Server, add_users, personal_env, run


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    env = personal_env(d)
    add_users(store, env, "kim", "lee")
    with Server(store, env=env) as s:
        yield s.url.removesuffix("/tap"), d


def test_the_cli_works_as_a_client(service, tmp_path):
    base, d = service
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "MERIDIAN_SERVICE": base}
    cli = lambda *a, **k: run(*a, env=env, **k)  # noqa: E731
    p = cli("login", "kim", input="wrong-password\n", check=False)
    assert p.returncode != 0 and "401" in p.stderr
    cli("login", "kim", input="kim-password\n")
    saved = tmp_path / "config/meridian/login.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    # Files.
    src = tmp_path / "table.csv"
    src.write_text("id,ra,dec\n1,56.75,24.12\n2,56.8,24.2\n")
    cli("vos", "mkdir", "work")
    cli("vos", "put", str(src), "--to", "vos://work")
    assert cli("vos", "ls", "work").stdout.split() == ["table.csv"]
    assert "kim" in cli("vos", "ls", "--long", "work").stdout
    out = tmp_path / "back.csv"
    cli("vos", "get", "work/table.csv", str(out))
    assert out.read_text() == src.read_text()
    cli("vos", "mv", "work/table.csv", "public")
    cli("vos", "cp", "public/table.csv", "work/copy.csv")
    assert cli("vos", "ls", "work").stdout.split() == ["copy.csv"]
    assert cli("vos", "get", "kim://public/table.csv", "-").stdout == src.read_text()
    p = cli("vos", "get", "work/nothing.csv", str(tmp_path / "x"), check=False)
    assert p.returncode != 0 and "404" in p.stderr and not (tmp_path / "x").exists()
    cli("vos", "rm", "work/copy.csv")
    cli("vos", "rmdir", "work")

    # Query results kept on the service.
    q = "SELECT source_id, ra, dec FROM gaia WHERE dec > 70"
    cli("query", q, "--out", "mydb://north")
    cli("query", q, "--out", "vos://north.csv")
    listed = cli("mydb", "list").stdout.split()
    assert listed == ["north"]
    kept = pd.read_csv(io.StringIO(cli("vos", "get", "north.csv", "-").stdout))
    assert len(kept) > 0 and list(kept.columns) == ["source_id", "ra", "dec"]
    cli("mydb", "import", "mine", str(src))
    assert sorted(cli("mydb", "list").stdout.split()) == ["mine", "north"]
    # An import from storage.
    cli("mydb", "import", "again", "kim://public/table.csv")
    assert "again" in cli("mydb", "list").stdout.split()
    cli("mydb", "drop", "again")
    assert cli("mydb", "list", "mine").stdout.split()[0].startswith("id")
    cli("mydb", "drop", "mine")
    cli("mydb", "drop", "north")
    assert cli("mydb", "list").stdout.strip() == ""

    # Groups.
    cli("group", "create", "team")
    cli("group", "add", "team", "lee", "--role", "rw")
    shown = cli("group", "show", "team").stdout
    assert '"lee"' in shown and '"rw"' in shown
    cli("vos", "put", str(src), "--to", "team://")
    assert "table.csv" in cli("vos", "ls", "team://").stdout
    cli("group", "dissolve", "team")
    assert "team" not in cli("group", "list").stdout

    cli("logout")
    assert not saved.exists()
    p = cli("vos", "ls", check=False)
    assert p.returncode != 0 and "401" in p.stderr
