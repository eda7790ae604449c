"""The receiving side: a prepared drive read back (reader, also what verify uses), imported
into a storage account (importer), reported to its import job (service_import)."""
