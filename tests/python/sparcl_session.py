"""A scripted session of the unmodified sparclclient (run in its own venv by
test_spectra_sparcl.py): startup, find, retrieve with DEFAULT and ALL, retrieve by specid,
missing, pandas and specutils outputs, errors, login. Prints one JSON line of what it saw
and saves the retrieved arrays to OUT.npz for comparison with astropy.

usage: sparcl_session.py BASE_URL OUT.npz USER PASSWORD PRIVATE_DR
"""

import json
import sys

import numpy as np
from sparcl.client import SparclClient
import sparcl.exceptions as ex

base, out, user, password, private_dr = sys.argv[1:6]
seen = {}
client = SparclClient(url=base, announcement=True)
seen["version"] = client.version
seen["all_datasets"] = sorted(client.all_datasets)
seen["default_fields"] = sorted(client.get_default_fields())
seen["all_fields"] = sorted(client.get_all_fields())

# find: constraints, outfields, sort, limit, count.
found = client.find(outfields=["sparcl_id", "specid", "ra", "dec", "data_release"],
                    constraints={"data_release": ["DESI-EDR"]}, limit=None, sort="specid")
seen["find_count"] = len(found.records)
seen["find_specids"] = [r.specid for r in found.records]
seen["find_info_count"] = found.count
narrow = client.find(outfields=["sparcl_id", "ra"], constraints={"ra": [216.95, 217.0],
                                                                  "data_release": ["DESI-EDR"]})
seen["find_ra"] = sorted(r.ra for r in narrow.records)
desc = client.find(outfields=["specid"], constraints={"data_release": ["DESI-EDR"]},
                   sort="-specid", limit=3)
seen["find_desc"] = [r.specid for r in desc.records]
seen["count_only"] = client.find(constraints={"data_release": ["DESI-EDR"]}, countOnly=True)
seen["count_limited"] = client.find(constraints={"data_release": ["DESI-EDR"]}, countOnly=True,
                                    limit=3)

ids = [r.sparcl_id for r in found.records]
# retrieve DEFAULT and ALL.
default = client.retrieve(ids, include="DEFAULT", dataset_list=["DESI-EDR"])
seen["default_keys"] = sorted(default.records[0].keys())
seen["default_n"] = len(default.records)
every = client.retrieve(ids, include="ALL", dataset_list=["DESI-EDR"])
seen["all_keys"] = sorted(every.records[0].keys())
arrays = {}
for r in every.records:
    key = r.sparcl_id
    arrays[f"{key}:flux"] = r.flux
    arrays[f"{key}:ivar"] = r.ivar
    arrays[f"{key}:mask"] = r.mask
    arrays[f"{key}:wavelength"] = r.wavelength
    arrays[f"{key}:meta"] = np.array([r.specid, r.ra, r.dec], dtype=float)
np.savez(out, **arrays)
seen["flux_dtype"] = str(every.records[0].flux.dtype)
seen["flux_is_ndarray"] = isinstance(every.records[0].flux, np.ndarray)
seen["records"] = [{"sparcl_id": r.sparcl_id, "specid": int(r.specid), "file_key": None}
                   for r in every.records]

# retrieve_by_specid.
by_specid = client.retrieve_by_specid([int(found.records[0].specid)], dataset_list=["DESI-EDR"])
seen["by_specid_n"] = len(by_specid.records)
seen["by_specid_ids"] = sorted(r.specid for r in by_specid.records)

# missing: unknown ids come back, known ones do not.
unknown = "00000000-0000-8000-8000-000000000000"
seen["missing"] = client.missing(ids + [unknown], dataset_list=["DESI-EDR"])
seen["missing_specids"] = client.missing_specids([int(found.records[0].specid), 12345],
                                                 dataset_list=["DESI-EDR"])
part = client.retrieve(ids[:2] + [unknown], include=["flux"], dataset_list=["DESI-EDR"])
seen["partial_n"] = len(part.records)
seen["partial_warnings"] = part.info["status"]["warnings"]

# pandas and specutils.
df = client.find(outfields=["sparcl_id", "specid", "ra", "dec"],
                 constraints={"data_release": ["DESI-EDR"]}, limit=None).to_pandas()
seen["pandas_rows"] = len(df)
seen["pandas_columns"] = sorted(df.columns)
spec = client.retrieve(ids[:3], include=["flux", "wavelength", "ivar", "mask"],
                       dataset_list=["DESI-EDR"])
try:
    su = spec.to_specutils()
    seen["specutils_type"] = type(su).__name__
    seen["specutils_flux_unit"] = str(getattr(su, "flux").unit)
    seen["specutils_shape"] = list(np.shape(su.flux))
except Exception as e:  # noqa: BLE001 - reported to the test
    seen["specutils_error"] = f"{type(e).__name__}: {e}"

# Errors.
try:
    client.retrieve(["x"] * 24001, include=["flux"], limit=24001)
    seen["too_many"] = "no error"
except Exception as e:  # noqa: BLE001
    seen["too_many"] = type(e).__name__
try:
    client.retrieve(ids, include=["no_such_field"])
    seen["bad_include"] = "no error"
except Exception as e:  # noqa: BLE001
    seen["bad_include"] = type(e).__name__
try:
    client.retrieve(ids, include=["flux"], dataset_list=[private_dr])
    seen["anonymous_private"] = "no error"
except Exception as e:  # noqa: BLE001
    seen["anonymous_private"] = f"{type(e).__name__}: {e}"
seen["anonymous_as"] = client.authorized["Loggedin_As"]

# Login with a Meridian account: the private dataset opens.
seen["bad_login"] = str(client.login(user, "wrong-password"))
client.login(user, password)
private = client.find(outfields=["sparcl_id"], constraints={"data_release": [private_dr]},
                      limit=5)
seen["private_found"] = len(private.records)
got = client.retrieve([r.sparcl_id for r in private.records], include=["flux"],
                      dataset_list=[private_dr])
seen["private_retrieved"] = len(got.records)
seen["logged_in_as"] = client.authorized["Loggedin_As"]
client.logout()
print(json.dumps(seen, default=str))
