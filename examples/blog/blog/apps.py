"""App config: connects model-driven cache invalidation once the models are loaded."""

from django.apps import AppConfig


def post_tags(post) -> list[str]:
    """The tags a post's cached pages and functions depend on."""
    return ["posts", f"author:{post.author_id}"]


class BlogConfig(AppConfig):
    name = "blog"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_fastcache.invalidation import invalidate_on_change

        from .models import Author, Post

        # Saving or deleting a post (or an author) refreshes every cached list and
        # summary that shows it, after the transaction commits.
        invalidate_on_change(Post, tags=post_tags)
        invalidate_on_change(Author, tags=["posts", "author:{pk}"])
