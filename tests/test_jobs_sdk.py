"""Azure's own SDK drives the import service: the compatibility claim of issues 7 and 16.

``azure-mgmt-storageimportexport`` 0.1.0 is the one release that speaks
api-version 2016-11-01 (1.0.0b1/b2 speak 2021-01-01).  It is msrest-based:
it authenticates through ``signed_session()`` (not azure-core's policies) and
raises ``ErrorResponseException`` (msrest's ``HttpOperationError``, carrying
the parsed ARM error), not azure-core's ``HttpResponseError``.  It does not
insist on https for a bearer token, but we serve HTTPS anyway, with a
self-signed certificate the client verifies (``connection.verify = cert``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.mgmt.storageimportexport import StorageImportExport, models
from msrest.exceptions import HttpOperationError

from pipeline.jobs import auth
from tests import jobservice
from tests.conftest import FAST_KDF_ARGS, run_cli
from tests.drivedata import make_tree


class PublishSettingsCredential:
    """A token credential over a publish settings file.

    ``get_token`` is azure-core's protocol (for the 2021-01-01 SDKs);
    ``signed_session`` is msrest's, which the 2016-11-01 SDK calls per request.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokens = 0

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        token = auth.token_from_publish_settings(self.path)
        self.tokens += 1
        return AccessToken(token, auth.token_expiry(token))

    def signed_session(self, session: requests.Session | None = None) -> requests.Session:
        session = session or requests.Session()
        session.headers["Authorization"] = f"Bearer {self.get_token().token}"
        return session


def real_drive_list(tmp_path: Path) -> list[dict[str, str]]:
    """Two drives from a real prep (parallel fill), exported as the API's driveList."""
    src, jdir = tmp_path / "src", tmp_path / "journals"
    make_tree(src, small_files=20, random_mb=1, sparse_mb=1)
    run_cli("prep", "--srcdir", str(src), "--dstdir", "seed/vdir/", "--journal-dir", str(jdir),
            "--session-id", "sdk-1", *FAST_KDF_ARGS, "--fill", "parallel",
            "--drive", str(tmp_path / "a.img"), "--drive", str(tmp_path / "b.img"),
            "--drive-size", "40M", check_code=0)
    drives = json.loads(run_cli("journal", "export", "--journal-dir", str(jdir),
                                check_code=0).stdout)
    assert len(drives) == 2
    return drives


def test_azure_sdk_against_the_service(tmp_path: Path) -> None:
    drives = real_drive_list(tmp_path)
    cert, key = jobservice.self_signed_cert(tmp_path)
    data = tmp_path / "data"
    with jobservice.ServiceProcess(data, tls=(cert, key)) as svc:
        assert svc.url.startswith("https://127.0.0.1:")
        settings = tmp_path / "sdk.publishsettings"
        added = run_cli("service", "subscription", "add", "sdk", "--data", str(data),
                        "--out", str(settings), "--url", svc.url, check_code=0)
        sub_id = added.stdout.split()[-1]
        assert auth.read_publish_settings(settings).url == svc.url
        credential = PublishSettingsCredential(settings)
        client = StorageImportExport(credential, sub_id, base_url=svc.url)
        client.config.connection.verify = str(cert)

        assert {op.name for op in client.operations.list()} >= {
            "Microsoft.ImportExport/jobs/write", "Microsoft.ImportExport/locations/read"}
        locations = {loc.name: loc for loc in client.locations.list()}
        assert len(locations) >= 6
        west = client.locations.get("West Europe")
        assert west.name == "westeurope" and west.city == locations["westeurope"].city
        assert "DHL" in west.supported_carriers
        assert west.alternate_locations[0] == west.id

        address = models.ReturnAddress(
            recipient_name="Ops Team", street_address1="1 Backup Way", city="Lisboa",
            postal_code="1000-001", country_or_region="Portugal", phone="+351 21 000 0000",
            email="ops@example.com")
        details = models.JobDetails(
            storage_account_id="/subscriptions/x/resourceGroups/seed/providers/"
            "Microsoft.Storage/storageAccounts/seedacct",
            job_type="Import", return_address=address, diagnostics_path="waimportexport",
            log_level="Verbose", backup_drive_manifest=True,
            drive_list=[models.DriveStatus(
                drive_id=d["driveId"], bit_locker_key=d["bitLockerKey"],
                manifest_file=d["manifestFile"], manifest_hash=d["manifestHash"],
                drive_header_hash=d["driveHeaderHash"]) for d in drives])
        job = client.jobs.create("seed-job-1", "backup-rg",
                                 models.PutJobParameters(location="westeurope",
                                                         tags={"seed": "first"},
                                                         properties=details))
        assert job.name == "seed-job-1" and job.type == "Microsoft.ImportExport/jobs"
        assert job.id == (f"/subscriptions/{sub_id}/resourceGroups/backup-rg/providers/"
                          "Microsoft.ImportExport/jobs/seed-job-1")
        props = job.properties
        assert props.state == "Creating" and props.provisioning_state == "Succeeded"
        assert props.shipping_information.city == west.city
        assert props.return_address.email == "ops@example.com"
        assert [d.drive_id for d in props.drive_list] == [d["driveId"] for d in drives]
        assert all(d.bit_locker_key is None and d.state == "Specified"
                   for d in props.drive_list)

        got = client.jobs.get("seed-job-1", "backup-rg")
        assert got.properties.drive_list[0].manifest_hash == drives[0]["manifestHash"]
        assert got.tags == {"seed": "first"}
        for more in ("seed-job-2", "seed-job-3"):  # so the listings page (nextLink)
            client.jobs.create(more, "other-rg", models.PutJobParameters(
                location="eastus", properties=models.JobDetails(
                    storage_account_id="/x", drive_list=[models.DriveStatus(
                        drive_id=f"{more}-d", bit_locker_key=jobservice.recovery_password(),
                        manifest_file="/m", manifest_hash="00ff")])))
        filtered = client.jobs.list_by_subscription(
            top=1, filter="location eq 'East US' or name eq 'seed-job-1'")
        assert sorted(j.name for j in filtered) == ["seed-job-1", "seed-job-2", "seed-job-3"]
        assert [j.name for j in client.jobs.list_by_resource_group(
            "other-rg", filter="name ne 'seed-job-2'")] == ["seed-job-3"]
        with pytest.raises(models.ErrorResponseException) as bad_filter:
            list(client.jobs.list_by_subscription(filter="state eq 'Shipping'"))
        assert bad_filter.value.error.code == "InvalidFilter"
        by_sub = [j.name for j in client.jobs.list_by_subscription(top=2)]
        assert sorted(by_sub) == ["seed-job-1", "seed-job-2", "seed-job-3"]
        assert [j.name for j in client.jobs.list_by_resource_group("backup-rg")] == ["seed-job-1"]
        assert [j.name for j in client.jobs.list_by_resource_group("OTHER-RG", top=1)] == [
            "seed-job-2", "seed-job-3"]

        updated = client.jobs.update("seed-job-1", "backup-rg", models.UpdateJobParameters(
            delivery_package=models.PackageInfomation(
                carrier_name="dhl", tracking_number="JD014600003828", drive_count=2,
                ship_date="2026-11-26"),
            return_shipping=models.ReturnShipping(carrier_name="UPS",
                                                  carrier_account_number="A1B2C3"),
            state="Shipping"))
        assert updated.properties.state == "Shipping"
        assert updated.properties.delivery_package.carrier_name == "DHL"  # the site's spelling
        assert updated.properties.return_shipping.carrier_account_number == "A1B2C3"

        keys = {k.drive_id: k.bit_locker_key
                for k in client.bit_locker_keys.list("seed-job-1", "backup-rg")}
        assert keys == {d["driveId"]: d["bitLockerKey"] for d in drives}

        # errors come back as the SDK's exception carrying our ARM code and message
        with pytest.raises(models.ErrorResponseException) as bad_name:
            client.jobs.create("Seed Job", "backup-rg",
                               models.PutJobParameters(location="westeurope", properties=details))
        assert isinstance(bad_name.value, HttpOperationError)
        assert bad_name.value.response.status_code == 400
        assert bad_name.value.error.code == "InvalidJobName"
        assert "contains a space" in bad_name.value.message or "lowercase" in bad_name.value.message
        with pytest.raises(models.ErrorResponseException) as refused:
            client.jobs.update("seed-job-1", "backup-rg",
                               models.UpdateJobParameters(state="Completed"))
        assert refused.value.response.status_code == 403  # the receiving site's step
        assert refused.value.error.code == "AuthorizationFailed"
        assert "Shipping job to Completed" in refused.value.message
        # the same client on the newer API versions' paths (0.1.0 lets us set the version)
        for version in ("2020-08-01", "2021-01-01"):
            client.jobs.api_version = version
            assert client.jobs.get("seed-job-1", "backup-rg").properties.state == "Shipping"
            assert [j.name for j in client.jobs.list_by_resource_group("backup-rg")] == [
                "seed-job-1"]
        client.jobs.api_version = "2016-11-01"
        with pytest.raises(models.ErrorResponseException) as carrier:
            client.jobs.update("seed-job-1", "backup-rg", models.UpdateJobParameters(
                return_shipping=models.ReturnShipping(carrier_name="Pony Express",
                                                      carrier_account_number="1")))
        assert carrier.value.error.code == "UnsupportedCarrier"
        with pytest.raises(models.ErrorResponseException) as missing:
            client.jobs.get("no-such-job", "backup-rg")
        assert missing.value.response.status_code == 404
        with pytest.raises(models.ErrorResponseException) as shipped:
            client.jobs.delete("seed-job-1", "backup-rg")
        assert shipped.value.error.code == "JobNotDeletable"
        client.jobs.delete("seed-job-3", "other-rg")
        assert [j.name for j in client.jobs.list_by_subscription()] == ["seed-job-1",
                                                                         "seed-job-2"]
        assert credential.tokens > 10  # one fresh token per request, as msrest asks
        assert svc.stop() == 0
    log = svc.log()
    assert "PUT /subscriptions/" in log and "listBitLockerKeys 200" in log
    for d in drives:
        assert d["bitLockerKey"] not in log
