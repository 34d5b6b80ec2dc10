"""`{{ n|humanize_bytes }}`: a byte count in the one size convention (controlplane.sizes)."""

from django import template

from controlplane.sizes import human_size

register = template.Library()


@register.filter(name="humanize_bytes")
def humanize_bytes(value) -> str:
    """Decimal SI units ("5.1 MB"); text that is not a number is shown as an em dash."""
    if value is None or value == "":
        return human_size(None)
    try:
        return human_size(float(value))
    except (TypeError, ValueError):
        return human_size(None)


@register.filter(name="get_item")
def get_item(mapping, key):
    return mapping.get(key) if mapping else None
