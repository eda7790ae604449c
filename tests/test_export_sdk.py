"""Azure's own SDK (azure-mgmt-storageimportexport 0.1.0, api-version 2016-11-01) creates
and reads an export job, and lists the keys of the drives the site wrote (issue 20)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from azure.mgmt.storageimportexport import StorageImportExport, models

from tests import jobservice
from tests.conftest import run_cli
from tests.test_jobs_sdk import PublishSettingsCredential


def test_azure_sdk_creates_and_reads_an_export_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with jobservice.ServiceProcess(data) as svc:
        settings = tmp_path / "sdk.publishsettings"
        added = run_cli("service", "subscription", "add", "sdk", "--data", str(data),
                        "--out", str(settings), "--url", svc.url, check_code=0)
        sub_id = added.stdout.split()[-1]
        client = StorageImportExport(PublishSettingsCredential(settings), sub_id,
                                     base_url=svc.url)
        address = models.ReturnAddress(
            recipient_name="Ops Team", street_address1="1 Backup Way", city="Lisboa",
            postal_code="1000-001", country_or_region="Portugal", phone="+351 21 000 0000",
            email="ops@example.com")
        details = models.JobDetails(
            storage_account_id="/subscriptions/x/resourceGroups/seed/providers/"
            "Microsoft.Storage/storageAccounts/seedacct", job_type="Export",
            return_address=address, diagnostics_path="waimportexport", log_level="Error",
            return_shipping=models.ReturnShipping(carrier_name="UPS",
                                                  carrier_account_number="A1B2C3"),
            export=models.Export(blob_path=["/photos/readme.txt"],
                                 blob_path_prefix=["/photos/2024/"]))
        job = client.jobs.create("export-sdk", "backup-rg", models.PutJobParameters(
            location="westeurope", properties=details))
        assert job.properties.job_type == "Export" and job.properties.state == "Creating"
        assert job.properties.export.blob_path_prefix == ["/photos/2024/"]
        got = client.jobs.get("export-sdk", "backup-rg")
        assert got.properties.export.blob_path == ["/photos/readme.txt"]
        assert got.properties.drive_list == []
        shipped = client.jobs.update("export-sdk", "backup-rg", models.UpdateJobParameters(
            delivery_package=models.PackageInfomation(carrier_name="DHL",
                                                      tracking_number="EMPTY-2",
                                                      drive_count=1, ship_date="2026-11-26"),
            state="Shipping"))
        assert shipped.properties.state == "Shipping"
        # the site writes a drive and records it; the customer's SDK then reads its key
        site = {"Authorization": f"Bearer {jobservice.site_token(data)}"}
        url = f"{svc.url}{got.id}?api-version=2016-11-01"
        drive = jobservice.drive_list(1, prefix="written")[0]
        for props in ({"state": "Received"},
                      {"state": "Transferring", "driveList": [{**drive, "state": "Received"}]}):
            r = httpx.patch(url, json={"properties": props}, headers=site)
            assert r.status_code == 200, r.text
        keys = list(client.bit_locker_keys.list("export-sdk", "backup-rg"))
        assert [(k.drive_id, k.bit_locker_key) for k in keys] == [
            (drive["driveId"], drive["bitLockerKey"])]
        listed = client.jobs.create("export-list", "backup-rg", models.PutJobParameters(
            location="westeurope", properties=models.JobDetails(
                storage_account_id="/x", job_type="Export",
                export=models.Export(blob_listblob_path="/lists/blobs.xml"))))
        assert listed.properties.export.blob_listblob_path == "/lists/blobs.xml"
        with pytest.raises(models.ErrorResponseException) as bad:
            client.jobs.create("export-bad", "backup-rg", models.PutJobParameters(
                location="westeurope", properties=models.JobDetails(
                    storage_account_id="/x", job_type="Export",
                    export=models.Export(blob_path=["no-slash"]))))
        assert bad.value.error.code == "InvalidBlobPath"
        assert "blobPath[0]" in bad.value.message
        assert svc.stop() == 0
