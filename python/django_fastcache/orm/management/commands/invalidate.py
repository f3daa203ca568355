"""``manage.py invalidate all | <app> | <app>.<model> | <app>.<model>.<pk> ...``: drops
cached queries, as django-cacheops' command of the same name does."""

from django.apps import apps
from django.core.management.base import CommandError, LabelCommand

from ...invalidation import invalidate_all, invalidate_model, invalidate_obj


class Command(LabelCommand):
    help = "Invalidates cached queries: all, an app, a model or one object."
    label = "all | <app_label> | <app_label>.<model> | <app_label>.<model>.<pk>"

    def handle_label(self, label, **options):
        parts = label.split(".")
        if label == "all":
            invalidate_all()
            return
        try:
            if len(parts) == 1:
                for model in apps.get_app_config(parts[0]).get_models(include_auto_created=True):
                    invalidate_model(model)
            elif len(parts) == 2:
                invalidate_model(apps.get_model(parts[0], parts[1]))
            elif len(parts) == 3:
                model = apps.get_model(parts[0], parts[1])
                try:
                    obj = model._base_manager.nocache().get(pk=parts[2])
                except (model.DoesNotExist, ValueError):
                    raise CommandError(f"{parts[0]}.{parts[1]} has no object with pk "
                                       f"{parts[2]!r}") from None
                invalidate_obj(obj)
            else:
                raise CommandError(f"cannot read {label!r}: expected {self.label}")
        except LookupError as exc:
            raise CommandError(str(exc)) from None
