"""Root conftest: makes the e2e cluster fixtures (`k8s_cluster`, `k8s_namespace`) available to
every test folder."""

pytest_plugins = ["e2e.fixtures"]
