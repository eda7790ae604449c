"""The receiving side: read a prepared drive back, import it, report to the job."""
