"""A deterministic generator of customer-support tickets (JSONL) for the erasure benchmark.

    from support_tickets import customer, write_tickets
    size = write_tickets(Path("raw/tickets.jsonl"), records=1_000_000, customers=10_000, seed=0)

Each record: ``ticket_id``, ``customer_id`` (the subject field, ``CUST-000042``),
``email``, ``created``, ``channel``, ``topic`` and ``text``: an agent-and-customer exchange
of about 330 characters that names the customer's e-mail and id the way real tickets do
(signature lines, "my account CUST-000042", "reply to ..."), order numbers, amounts and
dates. Customers are drawn uniformly, so each has about records / customers tickets spread
over the whole file. The same arguments write the same bytes on every machine.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FIRST = (
    "maria james anna li wei olga pedro fatima noah emma liam sofia ivan yuki amir chloe "
    "lucas mia omar elena david sara jonas lea tom nina raj priya ken aiko"
).split()
LAST = (
    "garcia smith mueller rossi dubois novak kim tanaka silva khan jensen berg costa lopez "
    "martin weber brown wilson fischer hansen ivanova sato patel moreau schulz"
).split()
DOMAINS = ("example.com", "mail.example.org", "example.net", "shop.example.co.uk")
PRODUCTS = (
    "wireless headphones",
    "standing desk",
    "coffee grinder",
    "running shoes",
    "4K monitor",
    "mechanical keyboard",
    "air purifier",
    "backpack",
    "smart thermostat",
    "electric kettle",
)
TOPICS = {
    "refund": (
        "I returned the {product} on {date} but the refund of {amount} has not arrived yet.",
        "The return of order {order} arrived on {date}; the refund of {amount} was issued today.",
    ),
    "delivery": (
        "Order {order} was due on {date} and tracking has said 'in transit' for a week.",
        "The carrier lost your {product}; a replacement ships by express at no extra cost.",
    ),
    "damaged": (
        "The {product} from order {order} arrived cracked and does not switch on.",
        "We will replace the {product} free of charge; a courier collects it on {date}.",
    ),
    "billing": (
        "I was charged {amount} twice for order {order} on {date}. Please refund one.",
        "The duplicate charge of {amount} has been reversed; allow a few days for your bank.",
    ),
    "account": (
        "I cannot log in since the password reset on {date}; I still have order {order} open.",
        "We unlocked your account; order {order} for the {product} ships as planned.",
    ),
}
CHANNELS = ("email", "chat", "phone", "web form")


def customer(number: int) -> tuple[str, str]:
    """(customer_id, e-mail) of customer ``number``: the same on every call."""
    rng = random.Random(number * 7919 + 17)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    email = f"{first}.{last}{number % 1000:03d}@{rng.choice(DOMAINS)}"
    return f"CUST-{number:06d}", email


def _ticket(rng: random.Random, number: int, customers: list[tuple[str, str]]) -> dict:
    customer_id, email = customers[rng.randrange(len(customers))]
    topic = rng.choice(tuple(TOPICS))
    question, answer = TOPICS[topic]
    slots = {
        "product": rng.choice(PRODUCTS),
        "order": f"ORD-{rng.randrange(10**7):07d}",
        "amount": f"EUR {rng.randrange(5, 900)}.{rng.randrange(100):02d}",
        "date": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
    }
    name = email.split("@")[0].split(".")[0].title()
    text = (
        f"Customer: Hello, my account is {customer_id}. {question.format(**slots)} "
        f"Please reply to {email}. Regards, {name}\n"
        f"Agent: Hi {name}, {answer.format(**slots)} Ticket reference T-{number:08d}."
    )
    return {
        "ticket_id": f"T-{number:08d}",
        "customer_id": customer_id,
        "email": email,
        "created": f"{slots['date']}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
        "channel": rng.choice(CHANNELS),
        "topic": topic,
        "text": text,
    }


def write_tickets(path: Path, *, records: int, customers: int, seed: int = 0) -> int:
    """Write ``records`` tickets of ``customers`` customers to ``path``; returns its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    people = [customer(n) for n in range(customers)]
    with open(path, "w", encoding="utf-8") as out:
        batch = []
        for number in range(records):
            batch.append(json.dumps(_ticket(rng, number, people)) + "\n")
            if len(batch) == 10_000:
                out.write("".join(batch))
                batch.clear()
        out.write("".join(batch))
    return path.stat().st_size
