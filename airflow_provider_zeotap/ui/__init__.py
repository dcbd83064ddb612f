"""The Syncs page of the Airflow UI: an Airflow plugin (a FastAPI app and a nav entry) run by the API server.

It reads only what the provider already stores: the sync Assets and their committed pointers (asset state
store), the task instances and XComs of the sync tasks, and the rejected-rows files. See docs/ui.md.
"""
