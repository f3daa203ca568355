"""An empty URLconf: tests that need views declare their own with override_settings."""

urlpatterns: list = []
