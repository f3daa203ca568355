"""Template tags under django-cacheops' library name, so templates keep ``{% load cacheops %}``:

``{% cached <timeout> <fragment_name> [extra ...] %}...{% endcached %}``: the rendered
fragment, kept for ``timeout`` seconds (None: the cache's default), keyed on the name
and the extra values.

``{% cached_as <queryset|model|instance> <timeout> <fragment_name> [extra ...] %}...
{% endcached_as %}``: the same, invalidated by writes to what the sample reads.
"""

from django import template

from .. import simple

__all__ = ["invalidate_fragment", "register"]

register = template.Library()


class _FragmentNode(template.Node):
    def __init__(self, nodelist, args, with_sample: bool) -> None:
        self.nodelist = nodelist
        self.args = args
        self.with_sample = with_sample

    def render(self, context):
        # Template strings are SafeStrings: keyed as plain str, as invalidate_fragment sees them.
        values = [v[:] if isinstance(v, str) else v  # a slice is a plain str
                  for v in (a.resolve(context) for a in self.args)]
        if self.with_sample:
            sample, timeout, name, *extra = values
            decorate = simple.cached_as(sample, timeout=timeout, extra=(name, *extra))
        else:
            timeout, name, *extra = values
            decorate = simple.cached(timeout=timeout, extra=(name, *extra))
        nodelist = self.nodelist

        def fragment():
            return nodelist.render(context)

        fragment.__qualname__ = "cacheops.fragment"
        fragment.__module__ = __name__
        return decorate(fragment)()


def _tag(name: str, with_sample: bool):
    least = 3 if with_sample else 2

    def compile_tag(parser, token):
        bits = token.split_contents()
        if len(bits) - 1 < least:
            raise template.TemplateSyntaxError(
                f"'{bits[0]}' takes at least {least} arguments: "
                + ("sample, timeout, fragment name" if with_sample else "timeout, fragment name"))
        nodelist = parser.parse((f"end{name}",))
        parser.delete_first_token()
        return _FragmentNode(nodelist, [parser.compile_filter(b) for b in bits[1:]], with_sample)

    register.tag(name, compile_tag)


_tag("cached", False)
_tag("cached_as", True)


def invalidate_fragment(fragment_name, *extra) -> None:
    """Drops a fragment cached by ``{% cached ... fragment_name extra %}``."""
    def fragment():
        return ""

    fragment.__qualname__ = "cacheops.fragment"
    fragment.__module__ = __name__
    simple.cached(extra=(fragment_name, *extra))(fragment).invalidate()
