"""DRF endpoints of the example blog, each with one of django-fastcache's throttles."""

from django.shortcuts import get_object_or_404
from django_fastcache.log import bind_context, log_event
from django_fastcache.throttling import AnonRateThrottle, ScopedRateThrottle, UserRateThrottle
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import Post


class PostsAPI(APIView):
    """Anonymous clients: REST_FRAMEWORK's "anon" rate per IP address."""

    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle]

    def get(self, request):
        return Response([{"id": p.id, "title": p.title} for p in Post.objects.all()[:20]])


class MeAPI(APIView):
    """Authenticated clients (token): the "user" rate per user."""

    permission_classes = [IsAuthenticated]
    throttle_classes = [UserRateThrottle]

    def get(self, request):
        return Response({"id": request.user.pk, "username": request.user.username})


class SearchAPI(APIView):
    """A scoped rate ("search"), shared by every view with this scope."""

    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "search"

    def get(self, request):
        q = request.query_params.get("q", "")
        return Response([p.title for p in Post.objects.filter(title__icontains=q)[:20]])


class LikeAPI(APIView):
    """Logs a structured event; saving the post invalidates its cached pages."""

    permission_classes = [IsAuthenticated]
    throttle_classes: list = []

    def post(self, request, post_id: int):
        post = get_object_or_404(Post, pk=post_id)
        post.likes += 1
        post.save(update_fields=["likes"])
        # DRF authenticates inside the view, after the middleware set the request context.
        with bind_context(user_id=request.user.pk):
            log_event("post.liked", {"post_id": post.id, "likes": post.likes})
        return Response({"post": post.id, "likes": post.likes})
