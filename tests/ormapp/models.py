"""Models for the ORM cache tests and benchmark (a blog's shape)."""

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)

    class Meta:
        app_label = "ormapp"


class Tag(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "ormapp"


class Post(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="posts")
    title = models.CharField(max_length=200)
    category = models.CharField(max_length=20, default="news")
    published = models.BooleanField(default=True)
    views = models.IntegerField(default=0)
    tags = models.ManyToManyField(Tag, related_name="posts", blank=True)

    class Meta:
        app_label = "ormapp"
        ordering = ["id"]


class Note(models.Model):
    """Not in CACHEOPS: never cached."""

    text = models.CharField(max_length=50)

    class Meta:
        app_label = "ormapp"
