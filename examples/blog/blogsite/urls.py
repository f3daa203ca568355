from django.urls import path

from . import views

urlpatterns = [
    path("blog/posts/", views.posts),
    path("blog/posts/<int:post_id>/edit/", views.edit),
    path("about/", views.about),
    path("stats/", views.stats),
]
