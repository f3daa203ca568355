from blog import api, views
from django.urls import path

urlpatterns = [
    path("blog/posts/", views.post_list),
    path("blog/posts/<int:post_id>/", views.post_detail),
    path("blog/posts/<int:post_id>/edit/", views.edit_post),
    path("blog/authors/<int:author_id>/", views.author_page),
    path("blog/visits/", views.visits),
    path("api/posts/", api.PostsAPI.as_view()),
    path("api/posts/<int:post_id>/like/", api.LikeAPI.as_view()),
    path("api/me/", api.MeAPI.as_view()),
    path("api/search/", api.SearchAPI.as_view()),
    path("stats/", views.stats),
]
