"""A notebook-style workflow with the unmodified astro-datalab client, run under its own
Python (DATALAB_PYTHON) by test_datalab_client.py. Prints one JSON line of what it saw.

    python datalab_workflow.py BASE_URL USER PASSWORD
"""

import json
import sys
import time

# Import every module first, then point them all at the service (importing queryClient
# resets storeClient's URL).
from dl import authClient as ac
from dl import queryClient as qc
from dl import storeClient as sc

base, user, password = sys.argv[1:4]
ac.set_svc_url(f"{base}/auth")
qc.set_svc_url(f"{base}/query")
sc.set_svc_url(f"{base}/storage")

# isAlive() without an argument pings the default (NOIRLab) URL, whatever set_svc_url said.
seen = {"alive": ac.isAlive(f"{base}/auth"), "query_alive": qc.isAlive(f"{base}/query")}
token = ac.login(user, password)
seen["token"] = token
seen["whoami"] = ac.whoAmI()
seen["valid"] = ac.isValidToken(token)

sql = ("SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia "
       "WHERE q3c_radial_query(ra, dec, 56.75, 24.12, 1) ORDER BY source_id")
df = qc.query(sql=sql, fmt="pandas")
seen["pandas_rows"] = len(df)
seen["pandas_columns"] = list(df.columns)
seen["pandas_first_ids"] = [int(x) for x in df["source_id"][:5]]

adql = "SELECT TOP 3 source_id FROM gaia ORDER BY source_id"
seen["adql_csv"] = qc.query(adql=adql, fmt="csv")

job = qc.query(sql=sql, fmt="csv", async_=True)
seen["job"] = job
deadline = time.time() + 60
while (status := qc.status(jobId=job)) not in ("COMPLETED", "ERROR") and time.time() < deadline:
    time.sleep(0.5)
seen["status"] = status
result = qc.results(jobId=job)
seen["async_rows"] = len(result.strip().split("\n")) - 1

try:
    qc.query(sql="SELECT nonexistent FROM gaia", fmt="csv")
    seen["bad_query"] = "no error"
except Exception as e:  # queryClientError carrying the service's message
    seen["bad_query"] = str(e)

# MyDB: a query kept as a table, listed, described, queried, renamed, copied, dropped.
seen["mydb_save"] = qc.query(sql=sql, out="mydb://pleiades")
seen["mydb_list"] = qc.mydb_list()
seen["mydb_columns"] = qc.mydb_list(table="pleiades")
seen["mydb_count"] = qc.query(sql="SELECT COUNT(*) AS n FROM mydb://pleiades", fmt="pandas")["n"][0].item()
seen["mydb_rename"] = qc.mydb_rename("pleiades", "pleiades2")
seen["mydb_copy"] = qc.mydb_copy("pleiades2", "pleiades3")
seen["mydb_truncate"] = qc.mydb_truncate("pleiades3")
seen["mydb_truncated_count"] = qc.query(sql="SELECT COUNT(*) AS n FROM mydb://pleiades3", fmt="pandas")["n"][0].item()
seen["mydb_list_after"] = qc.mydb_list()
seen["mydb_drop"] = [qc.mydb_drop("pleiades2"), qc.mydb_drop("pleiades3")]
seen["mydb_drop_missing"] = qc.mydb_drop("pleiades2")
seen["mydb_list_end"] = qc.mydb_list()

# Import a CSV of the user's own (positions near 40 of the Pleiades stars, 0.3 arcsec off),
# then cross-match it with the catalog.
import math
import os
import tempfile
rows = df[(abs(df["dec"] - 24.12) < 0.7)].head(40)
csv_path = os.path.join(tempfile.mkdtemp(), "mystars.csv")
with open(csv_path, "w") as f:
    f.write("id,ra,dec\n")
    for i, (ra, dec) in enumerate(zip(rows["ra"], rows["dec"])):
        f.write(f"{i},{ra + 0.3 / 3600 / math.cos(math.radians(dec))!r},{dec!r}\n")
seen["mystars"] = open(csv_path).read()
seen["mydb_import"] = qc.mydb_import("mystars", csv_path)
# The module-level call returns the service's error text rather than raising it.
seen["mydb_import_again"] = qc.mydb_import("mystars", csv_path)
seen["xmatch"] = qc.query(adql="SELECT m.id, g.source_id FROM mydb://mystars AS m JOIN gaia AS g "
                                "ON 1 = CONTAINS(POINT('ICRS', g.ra, g.dec), "
                                "CIRCLE('ICRS', m.ra, m.dec, 1.0 / 3600))", fmt="csv")
qc.mydb_drop("mystars")

# A table made empty with its columns, then filled by inserts (rows appended in its types).
seen["mydb_create"] = qc.mydb_create("made", "id,integer\nra,double precision\ndec,double precision\n")
seen["mydb_insert"] = [qc.mydb_insert("made", csv_path), qc.mydb_insert("made", csv_path)]
seen["mydb_index"] = qc.mydb_index("made", "ra")
seen["made_count"] = qc.query(sql="SELECT COUNT(*) AS n FROM mydb://made", fmt="pandas")["n"][0].item()
seen["made_columns"] = qc.mydb_list(table="made")
qc.mydb_drop("made")

# Storage: a home with public/ and tmp/, files put, listed, fetched, moved, copied, removed.
seen["ls_home"] = sc.ls("vos://")
seen["mkdir"] = sc.mkdir("vos://work")
seen["put"] = sc.put(csv_path, "vos://work/")
seen["ls_work"] = sc.ls("vos://work")
seen["ls_long"] = sc.ls("work", format="long")
seen["get_text"] = sc.get("vos://work/mystars.csv")
got_path = os.path.join(tempfile.mkdtemp(), "back.csv")
seen["get_file"] = sc.get("vos://work/mystars.csv", got_path)
seen["got_file"] = open(got_path).read()
seen["stat"] = sc.stat("vos://work/mystars.csv")
from dl.storeClient import is_vosDir
seen["isdir"] = [is_vosDir(f"{base}/storage", token, "vos://work"), is_vosDir(f"{base}/storage", token, "vos://work/mystars.csv")]
seen["access"] = sc.access("vos://work/mystars.csv", "r")
seen["mv"] = sc.mv("vos://work/mystars.csv", "vos://public")
seen["ls_public"] = sc.ls("vos://public")
seen["cp"] = sc.cp("vos://public/mystars.csv", "vos://work/copy.csv")
seen["tag"] = sc.tag("vos://work/copy.csv", "forty Pleiades stars")
seen["ln"] = sc.ln("vos://work/link.csv", "vos://work/copy.csv")
seen["via_link"] = sc.get("vos://work/link.csv")
seen["ls_work_after"] = sc.ls("vos://work")
seen["rm"] = [sc.rm("vos://work/link.csv"), sc.rm("vos://work/copy.csv"),
              sc.rm("vos://public/mystars.csv")]
seen["rm_missing"] = sc.rm("vos://work/copy.csv")
seen["rmdir"] = sc.rmdir("vos://work")
seen["ls_home_end"] = sc.ls("vos://")
# A query result written straight to storage, in any output format.
seen["query_to_vos"] = qc.query(sql=sql, fmt="csv", out="vos://pleiades.csv")
seen["query_to_vos_text"] = sc.get("vos://pleiades.csv")
seen["query_to_vos_fits"] = qc.query(sql=sql, fmt="fits", out="vos://pleiades.fits")
fits_path = os.path.join(tempfile.mkdtemp(), "pleiades.fits")
sc.get("vos://pleiades.fits", fits_path)
seen["fits_path"] = fits_path
seen["rm_results"] = [sc.rm("vos://pleiades.csv"), sc.rm("vos://pleiades.fits")]

seen["logout"] = ac.logout(token)
seen["valid_after_logout"] = ac.isValidToken(token)
print(json.dumps(seen))
