from django import template

register = template.Library()


@register.filter(name="bytes")
def human_bytes(value) -> str:
    size = float(value or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@register.filter(name="get_item")
def get_item(mapping, key):
    return mapping.get(key) if mapping else None
