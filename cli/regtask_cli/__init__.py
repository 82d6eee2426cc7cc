"""The `regtask` command line: submit, watch, cancel and inspect tasks and quotas."""
