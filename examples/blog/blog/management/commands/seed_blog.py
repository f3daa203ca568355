"""``manage.py seed_blog``: two authors with posts, and a user with an API token."""

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework.authtoken.models import Token

from blog.models import Author, Post

POSTS = {
    "Ada": ["Hello", "Caching, the easy part", "Invalidation, the hard part"],
    "Grace": ["Compilers", "Nanoseconds", "Debugging"],
}


class Command(BaseCommand):
    help = "Creates the example data (idempotent): authors, posts, user 'demo' and its token."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--token", help="the API token of user 'demo' (default: random)")

    @transaction.atomic
    def handle(self, *args, token=None, **options) -> None:
        for name, titles in POSTS.items():
            author, _ = Author.objects.get_or_create(name=name)
            for title in titles:
                Post.objects.get_or_create(author=author, title=title,
                                           defaults={"body": f"{title}, by {name}."})
        user, created = User.objects.get_or_create(username="demo")
        if created:
            user.set_unusable_password()
            user.save()
        Token.objects.filter(user=user).delete()
        key = Token.objects.create(user=user, key=token or Token.generate_key()).key
        self.stdout.write(f"seeded {Author.objects.count()} authors, {Post.objects.count()} "
                          f"posts; user 'demo' token {key}")
